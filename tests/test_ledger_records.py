"""The ledger's reads and writes a run relies on: which trial is best, totals, meta values, the runs table across
a stop, per-example values, the verify table, and a file that is not a ledger. Real SQLite, in-process."""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from nightlab.errors import NightlabError
from nightlab.ledger import Ledger, TrialRecord, best_of
from nightlab.per_example import Examples
from nightlab.types import RunEnd, Status


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(tmp_path / "state" / "ledger.sqlite")  # makes its directory
    yield opened
    opened.close()


def record(n: int, status: str, metric: float | None = None, **kw: object) -> TrialRecord:
    return TrialRecord(n=n, status=status, metric=metric, commit_sha=f"c{n}", **kw)


# -- which trial is best ------------------------------------------------------------------------------------
def test_the_best_is_the_last_baseline_or_keep_whatever_came_after(ledger: Ledger) -> None:
    assert ledger.best() is None and ledger.last() is None and ledger.trial(0) is None
    ledger.save(record(0, Status.RUNNING))
    assert ledger.best() is None  # a baseline still running is not a best yet
    steps = [(record(0, Status.BASELINE, 1.0), 0), (record(1, Status.KEEP, 0.9), 1),
             (record(2, Status.DISCARD, 0.95), 1), (record(3, Status.KEEP, 0.8), 3), (record(4, Status.CRASH), 3),
             (record(5, Status.HELD, 0.5), 3), (record(6, Status.RUNNING), 3)]  # (trial, the best after it)
    for rec, best in steps:
        ledger.save(rec)
        assert ledger.best().n == best_of(ledger.trials()).n == best, f"after trial {rec.n}"
    assert ledger.last().n == 6 and ledger.trial(3).metric == 0.8


def test_the_best_is_the_keep_recorded_last_not_the_one_numbered_last(ledger: Ledger) -> None:
    ledger.save(record(0, Status.BASELINE, 1.0, finished=100.0))
    ledger.save(record(2, Status.KEEP, 0.9, finished=200.0))
    ledger.save(record(1, Status.KEEP, 0.6, finished=300.0))  # rebased onto trial 2, then kept
    ledger.save(record(3, Status.DISCARD, 0.7, finished=400.0))
    assert ledger.best().n == best_of(ledger.trials()).n == 1


def test_totals_and_the_last_reason_sum_every_trial(ledger: Ledger) -> None:
    assert (ledger.total("cost_usd"), ledger.total("seconds"), ledger.last_reason(Status.REJECTED)) == (0, 0, "")
    ledger.save(record(0, Status.BASELINE, 1.0, seconds=10.0))
    ledger.save(record(1, Status.REJECTED, cost_usd=0.5, seconds=0.0, reason="changed prepare.py"))
    ledger.save(record(2, Status.REJECTED, cost_usd=0.25, reason="no change to train.py"))
    ledger.save(record(3, Status.KEEP, 0.9, cost_usd=0.25, seconds=12.5, reason="rebased onto trial 0"))
    assert (ledger.total("cost_usd"), ledger.total("seconds")) == (1.0, 22.5)
    assert ledger.last_reason(Status.REJECTED) == "no change to train.py"


def test_a_record_round_trips_and_its_public_form_names_the_commit(ledger: Ledger) -> None:
    rec = record(1, Status.KEEP, 0.9, runs=[0.91, 0.89], metrics={"val_loss": 0.9, "peak_memory_gb": 0.1},
                 findings=[{"check": "metric-constant", "reason": "r", "file": "train.py", "lines": [3]}])
    ledger.save(rec)
    assert ledger.trial(1) == rec
    public = ledger.trial(1).public()
    assert public["commit"] == "c1" and "commit_sha" not in public and public["runs"] == [0.91, 0.89]


def test_a_trials_values_are_running_means_and_its_hardware_each_kind_once() -> None:
    rec = TrialRecord(n=1)
    for loss, mem, hardware in ((1.0, 2.0, "cpu"), (0.5, 4.0, "NVIDIA H100"), (0.6, 3.0, "cpu")):
        rec.add_run(10.0, hardware)
        rec.add_values({"val_loss": loss, "peak_memory_gb": mem}, "val_loss")
    rec.add_run(3.0, "")  # a lost run took time but says nothing of its hardware
    assert rec.runs == [1.0, 0.5, 0.6] and rec.seconds == 33.0 and rec.hardware == "cpu; NVIDIA H100"
    assert rec.metrics == pytest.approx({"val_loss": 0.7, "peak_memory_gb": 3.0})


# -- meta ------------------------------------------------------------------------------------------------------
def test_meta_values_keep_their_json_type(ledger: Ledger) -> None:
    ledger.set_meta(noise=0.028, deterministic=False, sessions=3, examples=None)
    assert (ledger.get("noise"), ledger.get("deterministic"), ledger.get("sessions")) == (0.028, False, 3)
    assert ledger.get("examples", "unset") is None and ledger.get("missing", "unset") == "unset"
    assert ledger.meta()["sessions"] == "3"


# -- runs across a stop ---------------------------------------------------------------------------------------
def test_runs_left_running_by_a_stopped_nightlab_are_marked_interrupted_and_the_others_kept(ledger: Ledger) -> None:
    ledger.run_started("1.0a0s1", 1, 0, 0, 0)
    ledger.run_started("2.0a0s1", 2, 0, 0, 1)
    ledger.run_finished("1.0a0s1", RunEnd.OK, 0.9, 12.0, "", "cpu", "node1")
    ledger.run_started("1.1a0s1", 1, 1, 0, 0)
    ledger.interrupt_runs()
    runs = {r["job"]: r for r in ledger.runs()}
    assert {job: r["status"] for job, r in runs.items()} == {"1.0a0s1": "ok", "2.0a0s1": "interrupted",
                                                             "1.1a0s1": "interrupted"}
    assert (runs["1.0a0s1"]["value"], runs["1.0a0s1"]["host"], runs["2.0a0s1"]["slot"]) == (0.9, "node1", 1)
    assert all(r["finished"] >= r["started"] for r in runs.values())


# -- per-example values -----------------------------------------------------------------------------------------
def test_per_example_values_are_kept_per_run_averaged_and_forgotten_with_their_trial(ledger: Ledger) -> None:
    assert ledger.mean_examples(1) is None
    ledger.save(record(1, Status.RUNNING))
    ledger.save_examples(1, 1, Examples(array("d", [3.0, 5.0]), array("d", [1.0, 3.0])))
    ledger.save_examples(1, 0, Examples(array("d", [1.0, 3.0]), array("d", [1.0, 3.0])))
    assert [list(ex.values) for ex in ledger.examples(1)] == [[1.0, 3.0], [3.0, 5.0]]  # in run order
    mean = ledger.mean_examples(1)
    assert list(mean.values) == [2.0, 4.0] and list(mean.weights) == [1.0, 3.0]
    ledger.save_examples(2, 0, Examples(array("d", [7.0])))
    ledger.forget_examples(1)  # run again from scratch: its old values measured other code
    assert ledger.examples(1) == [] and len(ledger.examples(2)) == 1
    ledger.delete(2)
    assert ledger.examples(2) == [] and ledger.trial(2) is None


# -- verify -------------------------------------------------------------------------------------------------------
def verify_row(run: int, label: str) -> dict:
    return {"run": run, "kind": "val", "label": label, "trial": 1, "commit_sha": "c1", "seeds": [7], "final": 1,
            "reference_runs": [1.0], "runs": [0.9], "n_ref": 1, "n": 1, "reference": 1.0, "value": 0.9,
            "effect": 0.1, "ci_low": None, "ci_high": None, "p_value": None, "cohens_d": None, "note": "one seed",
            "created": 1.0}


def test_only_the_latest_verify_is_read_back_and_a_users_verify_tables_are_listed(ledger: Ledger) -> None:
    ledger.save_verify([verify_row(1, "best vs baseline"), verify_row(1, "trial 1 vs baseline")])
    ledger.save_verify([verify_row(ledger.next_verify_run(), "best vs baseline")])
    assert [(r["run"], r["label"], r["final"]) for r in ledger.latest_verify()] == [(2, "best vs baseline", True)]
    ledger.db.execute("CREATE TABLE verify_notes (what TEXT)")
    ledger.db.execute("INSERT INTO verify_notes VALUES ('rerun on the GPU box')")
    tables = {name: (cols, rows) for name, cols, rows in ledger.verify_tables()}
    assert list(tables) == ["verify", "verify_notes"]
    assert tables["verify_notes"] == (["what"], [("rerun on the GPU box",)]) and len(tables["verify"][1]) == 3


# -- not a ledger -------------------------------------------------------------------------------------------------
def test_a_file_that_is_not_a_ledger_is_one_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not SQLite, it only has the name\n" * 100)
    with pytest.raises(NightlabError, match=rf"^{path}: not a readable nightlab ledger \("):
        Ledger(path)
    assert path.read_bytes().startswith(b"this is not SQLite")  # left as it was
