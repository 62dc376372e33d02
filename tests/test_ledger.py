"""The ledger's schema over time: a ledger an older nightlab wrote opens, gains what it lacks, keeps its trials."""

from __future__ import annotations

import sqlite3
from dataclasses import fields
from pathlib import Path

import pytest

from nightlab.errors import UsageError
from nightlab.ledger import MIGRATIONS, Ledger, TrialRecord
from nightlab.types import Status

# The trials table as nightlab wrote it before parallel trials (no `hardware`), and no migrations table.
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE trials (
    n INTEGER PRIMARY KEY, status TEXT NOT NULL, metric REAL, metrics TEXT, runs TEXT, delta REAL,
    description TEXT, hypothesis TEXT, reason TEXT, phase TEXT, commit_sha TEXT, parent TEXT, seconds REAL,
    seed INTEGER, cost_usd REAL, tokens_in INTEGER, tokens_out INTEGER, started REAL, finished REAL
);
INSERT INTO trials (n, status, metric, metrics, runs, description, commit_sha, seconds, seed, cost_usd,
                    tokens_in, tokens_out, started, finished)
VALUES (0, 'baseline', 1.5, '{"val_loss": 1.5}', '[1.5]', 'baseline', 'abc', 1.0, 0, 0, 0, 0, 1.0, 2.0),
       (1, 'keep', 1.2, '{"val_loss": 1.2}', '[1.2]', 'lower LR', 'def', 1.0, 1000, 0, 0, 0, 3.0, 4.0),
       (2, 'discard', 1.3, '{"val_loss": 1.3}', '[1.3]', 'wider', 'ghi', 1.0, 2000, 0, 0, 0, 5.0, 6.0);
"""


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def old_ledger(path: Path) -> Ledger:
    """A ledger an older nightlab wrote (OLD_SCHEMA), opened by this one."""
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    return Ledger(path)


def test_an_old_ledger_opens_and_gains_what_it_lacks(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = old_ledger(path)
    try:
        assert ledger.migrations() == list(MIGRATIONS)
        trials = ledger.trials()
        assert [(t.n, t.status, t.hardware) for t in trials] == [(0, "baseline", None), (1, "keep", None),
                                                                 (2, "discard", None)]
        assert ledger.best().n == 1
        trials[2].hardware = "cpu"
        ledger.save(trials[2])  # the new column is writable
        ledger.run_started("3.0a0s1", 3, 0, 0, 0)  # so are the tables it lacked
        assert ledger.latest_verify() is None and ledger.next_verify_run() == 1
    finally:
        ledger.close()
    assert {f.name for f in fields(TrialRecord)} <= columns(path, "trials")
    again = Ledger(path)  # applied migrations are not run twice
    try:
        assert again.migrations() == list(MIGRATIONS) and again.trial(2).hardware == "cpu"
    finally:
        again.close()


def test_a_new_ledger_has_every_column_and_records_every_migration(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        assert ledger.migrations() == list(MIGRATIONS)
        assert ledger.best() is None
        ledger.save(TrialRecord(n=0))
        assert ledger.trial(0).status == Status.RUNNING and ledger.best() is None
    finally:
        ledger.close()
    # A TrialRecord field without a column (in SCHEMA and a migration) would fail every save.
    assert {f.name for f in fields(TrialRecord)} <= columns(tmp_path / "ledger.sqlite", "trials")


def test_a_ledger_from_between_has_its_columns_kept(tmp_path: Path) -> None:
    """A ledger with the hardware column but no migrations table (written before migrations were recorded)."""
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA + "ALTER TABLE trials ADD COLUMN hardware TEXT;")
    ledger = Ledger(path)
    try:
        assert ledger.migrations() == list(MIGRATIONS) and [t.n for t in ledger.trials()] == [0, 1, 2]
    finally:
        ledger.close()


def test_verify_rows_round_trip(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        row = {"run": ledger.next_verify_run(), "kind": "val", "label": "best vs baseline", "trial": 1,
               "commit_sha": "def", "seeds": [7, 8], "final": 0, "reference_runs": [1.5, 1.4], "runs": [1.2, 1.1],
               "n_ref": 2, "n": 2, "reference": 1.45, "value": 1.15, "effect": 0.3, "ci_low": 0.1, "ci_high": 0.5,
               "p_value": 0.01, "cohens_d": 3.0, "note": "", "created": 1.0}
        ledger.save_verify([row])
        assert ledger.latest_verify() == [row | {"final": False}]
        assert ledger.next_verify_run() == 2
        assert [name for name, _, _ in ledger.verify_tables()] == ["verify"]
    finally:
        ledger.close()


def test_agent_seconds_and_agent_come_by_a_named_migration(tmp_path: Path) -> None:
    ledger = old_ledger(tmp_path / "ledger.sqlite")
    try:
        assert {"trials.agent_seconds", "trials.agent"} <= set(ledger.migrations())
        assert [(t.agent_seconds, t.agent) for t in ledger.trials()] == [(0.0, "")] * 3  # older trials: unknown
        rec = ledger.trial(2)
        rec.agent_seconds, rec.agent = 12.5, "openai local @ http://127.0.0.1:8080/v1"
        ledger.save(rec)
        assert ledger.trial(2).agent_seconds == 12.5 and ledger.trial(2).agent.startswith("openai local")
    finally:
        ledger.close()


def test_the_audit_verdict_and_findings_come_by_a_named_migration(tmp_path: Path) -> None:
    ledger = old_ledger(tmp_path / "ledger.sqlite")
    try:
        assert {"trials.audit", "trials.findings"} <= set(ledger.migrations())
        assert [(t.audit, t.findings) for t in ledger.trials()] == [("", [])] * 3  # older trials: not audited
        rec = ledger.trial(1)
        rec.audit = "suspicious"
        rec.findings = [{"check": "metric-constant", "reason": "a constant", "file": "train.py", "lines": [3]}]
        ledger.save(rec)
        assert ledger.trial(1).findings[0]["lines"] == [3] and ledger.trial(1).audit == "suspicious"
    finally:
        ledger.close()


def test_the_screening_value_comes_by_a_named_migration(tmp_path: Path) -> None:
    ledger = old_ledger(tmp_path / "ledger.sqlite")
    try:
        assert "trials.screen" in ledger.migrations()
        assert [t.screen for t in ledger.trials()] == [None] * 3  # older trials were never screened
        rec = ledger.trial(2)
        rec.screen = 1.25
        ledger.save(rec)
        assert ledger.trial(2).screen == 1.25
    finally:
        ledger.close()


def test_the_rebase_count_comes_by_a_named_migration(tmp_path: Path) -> None:
    ledger = old_ledger(tmp_path / "ledger.sqlite")
    try:
        assert "trials.rebases" in ledger.migrations()
        assert [t.rebases for t in ledger.trials()] == [0] * 3  # an older nightlab never persisted one
        rec = ledger.trial(2)
        rec.rebases = 2
        ledger.save(rec)
        assert ledger.trial(2).rebases == 2 and ledger.trial(2).public()["rebases"] == 2
    finally:
        ledger.close()


def test_the_last_trials_are_read_in_order_without_reading_the_rest(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        for n in range(30):
            ledger.save(TrialRecord(n=n, status=Status.DISCARD, description=f"idea {n}"))
        assert [t.n for t in ledger.trials(last=4)] == [26, 27, 28, 29] == [t.n for t in ledger.trials()[-4:]]
        assert len(ledger.trials(last=100)) == 30 and ledger.last().n == 29
    finally:
        ledger.close()


def test_the_deltas_of_keeps_come_in_order_without_the_others(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        rows = [(Status.BASELINE, None), (Status.KEEP, -0.1), (Status.DISCARD, 0.2), (Status.KEEP, -0.05),
                (Status.KEEP, None)]
        for n, (status, delta) in enumerate(rows):
            ledger.save(TrialRecord(n=n, status=status, delta=delta))
        assert ledger.deltas(Status.KEEP) == [-0.1, -0.05] and ledger.deltas(Status.DISCARD) == [0.2]
    finally:
        ledger.close()


def test_the_best_is_read_again_only_after_a_change_by_this_ledger_or_another(tmp_path: Path) -> None:
    ledger, other = Ledger(tmp_path / "ledger.sqlite"), Ledger(tmp_path / "ledger.sqlite")
    reads: list[str] = []
    ledger.db.set_trace_callback(lambda sql: reads.append(sql) if "FROM trials" in sql else None)
    try:
        ledger.save(TrialRecord(n=0, status=Status.BASELINE, finished=1.0, commit_sha="a"))
        assert ledger.best().commit_sha == "a" and ledger.best().commit_sha == "a"
        assert len(reads) == 1  # asked twice, read once
        ledger.save(TrialRecord(n=1, status=Status.KEEP, finished=2.0, commit_sha="b"))
        assert ledger.best().commit_sha == "b"
        other.save(TrialRecord(n=2, status=Status.KEEP, finished=3.0, commit_sha="c"))  # another connection
        assert ledger.best().commit_sha == "c"
        other.delete(2)
        assert ledger.best().commit_sha == "b" and len(reads) == 4
    finally:
        ledger.close()
        other.close()


def test_a_tag_refuses_a_changed_identity_and_takes_keys_it_did_not_know(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.check_identity({"metric": "val_loss"}, "nightlab.toml")  # a new tag: stored as it is
        ledger.check_identity({"metric": "val_loss", "goal": "minimize"}, "nightlab.toml")  # a key added since
        assert ledger.get("identity") == {"metric": "val_loss", "goal": "minimize"}
        with pytest.raises(UsageError, match=r"^nightlab.toml: goal changed since this tag started "
                                             r"\('minimize' → 'maximize'\)"):
            ledger.check_identity({"metric": "val_loss", "goal": "maximize"}, "nightlab.toml")
        assert ledger.get("identity")["goal"] == "minimize"
    finally:
        ledger.close()
