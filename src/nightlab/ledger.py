"""The SQLite ledger: the source of truth for a tag, one transaction per state change; results.tsv, commit messages."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from copy import copy, deepcopy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from nightlab.errors import NightlabError, UsageError
from nightlab.per_example import Examples, average
from nightlab.types import RunEnd, Status

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    n INTEGER PRIMARY KEY,
    status TEXT NOT NULL,          -- a Status value ('running' while in flight)
    metric REAL, metrics TEXT, runs TEXT, delta REAL,
    description TEXT, hypothesis TEXT, reason TEXT, phase TEXT,
    commit_sha TEXT, parent TEXT, seconds REAL, seed INTEGER,
    cost_usd REAL, tokens_in INTEGER, tokens_out INTEGER,
    started REAL, finished REAL, hardware TEXT,
    agent_seconds REAL, agent TEXT,
    audit TEXT NOT NULL DEFAULT '', findings TEXT,  -- the audit's verdict and findings (audit.py)
    screen REAL, rebases INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS trials_finished ON trials (finished);  -- best(): the keep recorded last, read from the end
CREATE TABLE IF NOT EXISTS runs (     -- one row per job an executor ran: per-slot activity, retries of lost runs
    job TEXT PRIMARY KEY, trial INTEGER NOT NULL, k INTEGER NOT NULL, attempt INTEGER NOT NULL, slot INTEGER,
    status TEXT NOT NULL,  -- 'running', a failing Status, or a RunEnd
    value REAL, seconds REAL, reason TEXT, hardware TEXT, host TEXT, started REAL, finished REAL
);
CREATE TABLE IF NOT EXISTS examples (  -- per-example values of the primary metric, one row per run (per_example.py)
    trial INTEGER NOT NULL, k INTEGER NOT NULL, count INTEGER NOT NULL, vals BLOB NOT NULL, weights BLOB,
    PRIMARY KEY (trial, k)
);
CREATE TABLE IF NOT EXISTS verify (   -- one row per comparison of one `nightlab verify` (see verify.py)
    run INTEGER NOT NULL, kind TEXT NOT NULL, label TEXT NOT NULL, trial INTEGER, commit_sha TEXT,
    seeds TEXT, final INTEGER, reference_runs TEXT, runs TEXT, n_ref INTEGER, n INTEGER,
    reference REAL, value REAL, effect REAL, ci_low REAL, ci_high REAL, p_value REAL, cohens_d REAL,
    note TEXT, created REAL,
    PRIMARY KEY (run, kind, label)
);
CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied REAL);
"""
VERIFY_COLUMNS = ("run", "kind", "label", "trial", "commit_sha", "seeds", "final", "reference_runs", "runs",
                  "n_ref", "n", "reference", "value", "effect", "ci_low", "ci_high", "p_value", "cohens_d",
                  "note", "created")
_VERIFY_JSON = ("seeds", "reference_runs", "runs")


def _add_column(table: str, column: str, kind: str) -> Callable[[sqlite3.Connection], None]:
    def step(db: sqlite3.Connection) -> None:
        # A ledger from before migrations were recorded may have the column already.
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    return step


# Changes to the shape of an existing ledger, in order, each applied once and recorded by name in the
# `migrations` table. SCHEMA is the current shape: a new ledger records them all without running them.
# A new TrialRecord field needs its column in SCHEMA and a migration here.
MIGRATIONS: dict[str, Callable[[sqlite3.Connection], None]] = {
    "trials.hardware": _add_column("trials", "hardware", "TEXT"),
    "trials.agent_seconds": _add_column("trials", "agent_seconds", "REAL NOT NULL DEFAULT 0"),
    "trials.agent": _add_column("trials", "agent", "TEXT NOT NULL DEFAULT ''"),
    "trials.audit": _add_column("trials", "audit", "TEXT NOT NULL DEFAULT ''"),
    "trials.findings": _add_column("trials", "findings", "TEXT"),
    "trials.screen": _add_column("trials", "screen", "REAL"),
    "trials.rebases": _add_column("trials", "rebases", "INTEGER NOT NULL DEFAULT 0"),
}


@dataclass
class TrialRecord:
    n: int
    status: str = Status.RUNNING
    metric: float | None = None  # the primary value (mean over its runs)
    metrics: dict = field(default_factory=dict)  # every reported value (means)
    runs: list = field(default_factory=list)  # the primary value of each run (noise / confirmation runs)
    delta: float | None = None  # vs the best before it
    description: str = ""
    hypothesis: str = ""
    reason: str = ""
    phase: str = ""
    commit_sha: str = ""
    parent: str = ""
    seconds: float = 0.0
    seed: int = 0
    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    hardware: str = ""  # what its runs trained on ("cpu", GPU models): fixed-time results depend on it
    agent_seconds: float = 0.0  # the agent's time on its proposal, failed ones too (`seconds` is the runs')
    agent: str = ""  # the agent, model and endpoint that proposed it: they may change between sessions of a tag
    audit: str = ""  # the audit's verdict on its change (an AuditVerdict; "" = not audited)
    findings: list = field(default_factory=list)  # the audit's findings: {check, reason, file, lines}
    screen: float | None = None  # the primary value at [search] screen_budget_s (baseline: the mean of its runs)
    rebases: int = 0  # times its change was re-applied to a new best (trial.py), kept across a resume

    def add_run(self, seconds: float, hardware: str) -> None:
        """Any run's time and hardware (a lost or failed one took them too)."""
        self.seconds += seconds
        if hardware and hardware not in self.hardware.split("; "):
            self.hardware = "; ".join(filter(None, [self.hardware, hardware]))

    def add_values(self, values: dict[str, float], metric: str) -> None:
        """A successful run's values: each metric's running mean over the runs, and the primary's in `runs`."""
        done = len(self.runs)
        self.metrics = {m: (self.metrics.get(m, v) * done + v) / (done + 1) for m, v in values.items()}
        self.runs.append(values[metric])

    def start_over(self) -> None:
        """Its runs measured other code (it was rebased, or resumed): they are run again from scratch."""
        self.runs, self.metrics, self.metric, self.delta = [], {}, None, None

    def public(self) -> dict:
        """The `nightlab log --json` object for this trial: what asdict() gives, at a fraction of its cost (a long
        night's `nightlab log --json` makes one per trial)."""
        d = {name: getattr(self, name) for name in _NAMES}
        for name in _JSON:  # the containers, copied as asdict() copies them
            d[name] = deepcopy(d[name]) if d[name] else type(d[name])()
        d["commit"] = d.pop("commit_sha")
        return d


_JSON = ("metrics", "runs", "findings")
_NAMES = tuple(f.name for f in fields(TrialRecord))


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.saves = 0  # changes to the trials table through this connection
        self._best: tuple[tuple[int, int], TrialRecord | None] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit is in the WAL (the OS holds it) when it returns, so a killed nightlab loses
            # nothing and the ledger is never corrupt; only a power loss may roll back the last commits, as it may
            # git's own refs and objects, which git does not fsync either by default. FULL would fsync every
            # commit: 4-9 ms each here, five times a trial, more than all else the harness does for a trial.
            self.db.execute("PRAGMA synchronous=NORMAL")
            migrate(self.db)
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise NightlabError(f"{path}: not a readable nightlab ledger ({e})") from None

    def migrations(self) -> list[str]:
        """The names of the migrations this ledger has (applied, or part of its schema from the start)."""
        return [row[0] for row in self.db.execute("SELECT name FROM migrations ORDER BY rowid")]

    def close(self) -> None:
        self.db.close()

    # -- meta -----------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta"))

    def set_meta(self, **values: object) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def get(self, key: str, default: Any = None) -> Any:  # any JSON value, as stored
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def check_identity(self, identity: dict[str, object], source: str) -> None:
        """Refuse to resume a tag whose metric, goal or editable set changed since it started."""
        stored = self.get("identity") or {}
        merged = identity | stored  # a new tag, or one from before a key existed, takes the key as it is now
        if merged != stored:
            self.set_meta(identity=merged)
        for key, value in identity.items():
            if merged[key] != value:
                raise UsageError(f"{source}: {key} changed since this tag started ({merged[key]!r} → {value!r}); "
                                 "start a new --tag or restore the setting")

    # -- trials ---------------------------------------------------------------------------
    def save(self, rec: TrialRecord) -> None:
        row = asdict(rec)
        for k in _JSON:
            row[k] = json.dumps(row[k])
        cols = ", ".join(row)
        self.saves += 1
        with self.db:
            self.db.execute(f"INSERT OR REPLACE INTO trials ({cols}) VALUES ({', '.join('?' * len(row))})",
                            list(row.values()))

    def delete(self, n: int) -> None:
        self.saves += 1
        with self.db:
            self.db.execute("DELETE FROM trials WHERE n = ?", (n,))
            self.db.execute("DELETE FROM examples WHERE trial = ?", (n,))

    # -- per-example values -----------------------------------------------------------------
    def save_examples(self, trial: int, k: int, ex: Examples) -> None:
        vals, weights = ex.encode()
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO examples VALUES (?, ?, ?, ?, ?)",
                            (trial, k, len(ex), vals, weights))

    def examples(self, trial: int) -> list[Examples]:
        """Every run's per-example values of a trial, in run order."""
        rows = self.db.execute("SELECT vals, weights FROM examples WHERE trial = ? ORDER BY k", (trial,))
        return [Examples.decode(vals, weights) for vals, weights in rows]

    def mean_examples(self, trial: int) -> Examples | None:
        """A trial's per-example values averaged over its runs (None if it reported none)."""
        return average(self.examples(trial))

    def forget_examples(self, trial: int) -> None:
        """A trial that is run again from scratch (resumed, rebased): its old runs measured other code."""
        with self.db:
            self.db.execute("DELETE FROM examples WHERE trial = ?", (trial,))

    def trials(self, last: int | None = None) -> list[TrialRecord]:
        """Every trial in order, or only the `last` ones (a read whose cost does not grow with the ledger)."""
        if last is None:
            return self._records("ORDER BY n")
        return self._records("ORDER BY n DESC LIMIT ?", last)[::-1]

    def _records(self, where: str, *params: object) -> list[TrialRecord]:
        cur = self.db.execute(f"SELECT * FROM trials {where}", params)
        names = [c[0] for c in cur.description]
        out = []
        for values in cur:
            row = dict(zip(names, values))
            for k in _JSON:
                row[k] = json.loads(row[k]) if row[k] else []
            if row["metrics"] == []:
                row["metrics"] = {}
            out.append(TrialRecord(**{name: row[name] for name in _NAMES}))
        return out

    # The reads every trial makes, each by an index (n, or finished): their cost does not grow with the trials.
    def trial(self, n: int) -> TrialRecord | None:
        return next(iter(self._records("WHERE n = ?", n)), None)

    def last(self) -> TrialRecord | None:  # the trial with the highest number
        return next(iter(self.trials(last=1)), None)

    def best(self) -> TrialRecord | None:
        """The baseline or keep recorded last (a rebased trial may be kept after a later-numbered one); None before.
        Read again only after a change to the trials (a trial asks for it several times): by this connection
        (`saves`), or by another one (SQLite's data_version)."""
        now = (self.saves, self.db.execute("PRAGMA data_version").fetchone()[0])
        if self._best is None or self._best[0] != now:
            found = next(iter(self._records("WHERE status IN (?, ?) ORDER BY finished DESC, n DESC LIMIT 1",
                                            Status.BASELINE, Status.KEEP)), None)
            self._best = (now, found)
        return copy(self._best[1])

    def last_reason(self, status: str) -> str:
        """The reason the last trial with `status` gives ('' when none has it)."""
        row = self.db.execute("SELECT reason FROM trials WHERE status = ? ORDER BY n DESC LIMIT 1",
                              (status,)).fetchone()
        return row[0] or "" if row else ""

    def deltas(self, status: str) -> list[float]:
        """The delta of every trial with `status` that has one, in order (read without the rest of the rows)."""
        rows = self.db.execute("SELECT delta FROM trials WHERE status = ? AND delta IS NOT NULL ORDER BY n", (status,))
        return [row[0] for row in rows]

    def total(self, column: Literal["cost_usd", "seconds"]) -> float:
        """A sum over every trial: what the agent cost, or the seconds of runs (a study's compute budget)."""
        return self.db.execute(f"SELECT COALESCE(SUM({column}), 0) FROM trials").fetchone()[0]

    # -- runs (jobs) ------------------------------------------------------------------------
    def run_started(self, job: str, trial: int, k: int, attempt: int, slot: int) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO runs (job, trial, k, attempt, slot, status, started) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", (job, trial, k, attempt, slot, Status.RUNNING,
                                                             time.time()))

    def run_finished(self, job: str, status: str, value: float | None, seconds: float, reason: str,
                     hardware: str, host: str) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET status = ?, value = ?, seconds = ?, reason = ?, hardware = ?, host = ?, "
                            "finished = ? WHERE job = ?", (status, value, seconds, reason, hardware, host,
                                                          time.time(), job))

    def runs(self) -> list[dict]:
        return _dicts(self.db.execute("SELECT * FROM runs ORDER BY started"))

    def interrupt_runs(self) -> None:
        """Runs left 'running' by a stopped nightlab: they ended with it."""
        with self.db:
            self.db.execute("UPDATE runs SET status = ?, finished = ? WHERE status = ?",
                            (RunEnd.INTERRUPTED, time.time(), Status.RUNNING))

    # -- verify -----------------------------------------------------------------------------
    def next_verify_run(self) -> int:
        """The number the next `nightlab verify` gets (1, 2, ...)."""
        return (self.db.execute("SELECT MAX(run) FROM verify").fetchone()[0] or 0) + 1

    def save_verify(self, rows: list[dict]) -> None:
        """One verify run's comparisons; lists in `_VERIFY_JSON` columns are stored as JSON."""
        records = [[json.dumps(r[k]) if k in _VERIFY_JSON else r[k] for k in VERIFY_COLUMNS] for r in rows]
        with self.db:
            self.db.executemany(f"INSERT OR REPLACE INTO verify ({', '.join(VERIFY_COLUMNS)}) "
                                f"VALUES ({', '.join('?' * len(VERIFY_COLUMNS))})", records)

    def latest_verify(self) -> list[dict] | None:
        """The rows of the most recent `nightlab verify`, as stored (None if it was never run)."""
        rows = _dicts(self.db.execute("SELECT * FROM verify WHERE run = (SELECT MAX(run) FROM verify) ORDER BY rowid"))
        for r in rows:
            for k in _VERIFY_JSON:
                r[k] = json.loads(r[k]) if r[k] else []
            r["final"] = bool(r["final"])
        return rows or None

    def verify_tables(self) -> list[tuple[str, list[str], list[tuple]]]:
        """Every `verify*` table (the verify table and any a user added) as (name, columns, rows), raw."""
        out = []
        names = [r[0] for r in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'verify%' ORDER BY name")]
        for name in names:
            cur = self.db.execute(f'SELECT * FROM "{name}"')
            rows = cur.fetchall()
            out.append((name, [c[0] for c in cur.description], rows))
        return out


def best_of(trials: list[TrialRecord]) -> TrialRecord | None:
    """The baseline or keep of `trials` recorded last, as Ledger.best() (every keep beats the best before it)."""
    kept = [t for t in trials if t.status in (Status.BASELINE, Status.KEEP)]
    return max(kept, key=lambda t: (t.finished or 0.0, t.n), default=None)


def _dicts(cur: sqlite3.Cursor) -> list[dict]:
    """A query's rows as {column: value}."""
    names = [c[0] for c in cur.description]
    return [dict(zip(names, row)) for row in cur]


def migrate(db: sqlite3.Connection) -> None:
    """Create what a new ledger lacks; bring a ledger from an older nightlab up to SCHEMA."""
    trials = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'trials'").fetchone()
    fresh = trials is None
    db.executescript(SCHEMA)
    done = [row[0] for row in db.execute("SELECT name FROM migrations")]
    for name, step in MIGRATIONS.items():
        if name in done:
            continue
        with db:
            if not fresh:
                step(db)
            db.execute("INSERT OR IGNORE INTO migrations VALUES (?, ?)", (name, time.time()))
