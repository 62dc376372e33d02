"""Everything a report shows, read from the ledger, the run directories and git (never from memory)."""

from __future__ import annotations

import json
import sqlite3
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from nightlab import project, views
from nightlab.config import Config
from nightlab.ledger import Ledger, TrialRecord
from nightlab.types import Metric, Status
from nightlab.workspace import git

MAX_DIFF = 200_000  # characters per trial: a report must stay openable even after a huge generated edit
FAILED = (Status.CRASH, Status.TIMEOUT, Status.REJECTED, Status.INVALID, Status.LOST)
CHAIN = (Status.BASELINE, Status.KEEP)  # the best so far, at each point


@dataclass
class VerifyTable:
    """One verify table of the ledger, shown as it is stored (its schema belongs to `nightlab verify`)."""

    name: str
    columns: list[str]
    rows: list[tuple]


@dataclass
class PhaseSummary:
    label: str
    trials: int
    kept: int
    failed: int
    start: float | None  # the best when the phase began
    end: float | None  # the best when it ended


@dataclass
class ReportData:
    tag: str
    metric: Metric
    trials: list[TrialRecord]  # finished trials only, in order
    noise: float | None
    summary: dict  # views.status_json
    hours: float  # wall clock, from the first trial's start to the last one's end
    scratchpad: str = ""
    scratchpad_name: str = "scratchpad.md"
    diffs: dict[int, str] = field(default_factory=dict)
    verify: list[VerifyTable] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    slots: list[dict] = field(default_factory=list)  # views.slot_activity, when runs went to several slots

    def best_path(self) -> list[tuple[int, float]]:
        """(trial, best value so far) at the baseline and at every keep."""
        return [(t.n, t.metric) for t in self.trials if t.status in CHAIN and t.metric is not None]

    def phases(self) -> list[PhaseSummary]:
        out: dict[str, PhaseSummary] = {}
        best = None
        for t in self.trials:
            if t.status in CHAIN and t.metric is not None:
                best = t.metric
            label = t.phase or "—"
            p = out.setdefault(label, PhaseSummary(label, 0, 0, 0, best, best))
            if t.n > 0:
                p.trials += 1
                p.kept += t.status == Status.KEEP
                p.failed += t.status in FAILED
            p.end = best
        return list(out.values())


def load(cfg: Config, tag: str, ledger_path: Path | None = None) -> ReportData:
    """Read a tag's report data; the ledger is opened read-only beside a loop that may be writing it."""
    state = project.state_dir(cfg, tag)
    ledger = Ledger(ledger_path or state / "ledger.sqlite")
    try:
        every = ledger.trials()
        noise = ledger.get("noise")
        evidence = views.evidence(ledger)
        started = ledger.get("started")
        verify = _verify_tables(ledger, {t.n: t.metric for t in every})
        slots = views.slots_of(ledger)
    finally:
        ledger.close()
    trials = [t for t in every if t.status != Status.RUNNING]
    ends = [t.finished for t in trials if t.finished]
    begin = started if isinstance(started, (int, float)) else min((t.started for t in every), default=None)
    hours = (max(ends) - begin) / 3600 if ends and begin else 0.0
    data = ReportData(tag=tag, metric=cfg.primary, trials=trials, noise=noise,
                      summary=views.status_json(cfg, tag, every, noise, f"nightlab/{tag}", evidence),
                      hours=max(hours, 0.0),
                      scratchpad_name=cfg.project.scratchpad, verify=verify,
                      running=[t.n for t in every if t.status == Status.RUNNING], slots=slots)
    data.scratchpad = _branch_file(cfg.root, f"nightlab/{tag}", cfg.project.scratchpad)
    data.diffs = {t.n: _diff(cfg.root, state, tag, t.n) for t in trials if t.n > 0}
    return data


VERIFY_COLUMNS = {"run", "kind", "label", "runs", "reference_runs", "reference", "value", "effect", "ci_low",
                  "ci_high", "p_value", "note"}


def _verify_tables(ledger: Ledger, val: dict[int, float | None]) -> list[VerifyTable]:
    """The latest `nightlab verify`, and any other `verify*` table shown as stored. A ledger without them
    (older, or verify never ran) gives nothing; a schema this code does not know is shown raw, not dropped."""
    out = []
    try:
        for name, columns, rows in ledger.verify_tables():
            if rows and name == "verify" and VERIFY_COLUMNS <= set(columns):
                out += _latest_verify([dict(zip(columns, r)) for r in rows], val)
            elif rows:
                out.append(VerifyTable(name, columns, rows))
    except sqlite3.Error:
        return []  # a table being created or migrated right now: the next regeneration shows it
    return out


def _latest_verify(rows: list[dict], val: dict[int, float | None]) -> list[VerifyTable]:
    """The last verify run: each check's two sides (mean ± sd), the effect (positive = better), CI and p;
    and, after `verify --select`, every state's validation, selection and test scores side by side."""
    last = max(r["run"] for r in rows)
    rows = [r for r in rows if r["run"] == last]
    table = VerifyTable(f"nightlab verify #{last}", ["kind", "check", "n", "baseline or without", "best",
                                                    "effect [95% CI]", "p", "note"], [])
    for r in (r for r in rows if not r["kind"].startswith("select")):
        runs, ref = _floats(r["runs"]), _floats(r["reference_runs"])
        effect = "—" if r["effect"] is None else f"{r['effect']:+.4g}"
        if r["ci_low"] is not None and r["ci_high"] is not None:
            effect += f" [{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]"
        p = "—" if r["p_value"] is None else "<0.001" if r["p_value"] < 0.001 else f"{r['p_value']:.3f}"
        table.rows.append((r["kind"], r["label"], len(runs) or "—", _pm(ref, r["reference"]), _pm(runs, r["value"]),
                           effect, p, r["note"] or ""))
    return [table, *_selection(rows, val, last)]


def _selection(rows: list[dict], val: dict[int, float | None], last: int) -> list[VerifyTable]:
    select = [r for r in rows if r["kind"] == "select"]
    if not select:
        return []
    test = {r["trial"]: r for r in rows if r["kind"] == "select-test"}
    table = VerifyTable(f"nightlab verify #{last}: re-ranking on the selection split",
                        ["state", "validation (search)", "selection", "test", "note"], [])
    for r in select:
        other = test.get(r["trial"])
        table.rows.append((r["label"], _pm([], val.get(r["trial"])), _pm(_floats(r["runs"]), r["value"]),
                           _pm(_floats(other["runs"]), other["value"]) if other else "—", r["note"] or ""))
    return [table]


def _floats(text: object) -> list[float]:
    try:
        values = json.loads(text) if isinstance(text, str) and text else []
    except ValueError:
        return []
    return [v for v in values if isinstance(v, (int, float))] if isinstance(values, list) else []


def _pm(runs: list[float], mean: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.5g} ± {statistics.stdev(runs):.2g}" if len(runs) >= 2 else f"{mean:.5g}"


def _branch_file(root: Path, branch: str, path: str) -> str:
    """A file as it is at the branch tip (`./` resolves the path against the project directory)."""
    return git("show", f"{branch}:./{path}", cwd=root, check=False)


def _diff(root: Path, state: Path, tag: str, n: int) -> str:
    patch = state / "runs" / str(n) / "diff.patch"
    text = patch.read_text(errors="replace") if patch.is_file() else ""
    if not text.strip():
        text = git("show", "--format=", f"refs/nightlab/{tag}/trial-{n}", "--", ".", cwd=root, check=False)
    if len(text) > MAX_DIFF:
        text = text[:MAX_DIFF] + f"\n… ({len(text) - MAX_DIFF} more characters in {patch})\n"
    return text
