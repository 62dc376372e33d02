"""The views of a tag built from records, in-process (views.py, status_data.py): slot activity, results.tsv line by
line, commit messages, `status --json` before and after the baseline, and the tables' cells. The CLI's own tests
read them whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from nightlab import config
from nightlab.ledger import Ledger, TrialRecord
from nightlab.status_data import queued, slot_activity, slots_of, status_json
from nightlab.types import Status
from nightlab.views import Tsv, commit_message
from nightlab.views import summary_table as summary
from nightlab.views import trials_table as table
from nlkit import BASE_CONFIG, toml_dumps

FINDING = {"check": "metric-constant", "reason": "prints a constant", "file": "train.py", "lines": [3, 9]}


def run(job: str, slot: int, started: float, finished: float | None, status: str = "ok", hardware: str = "cpu",
        trial: int = 1, k: int = 0) -> dict:
    return {"job": job, "trial": trial, "k": k, "slot": slot, "status": status, "started": started,
            "finished": finished, "hardware": hardware}


def shown(renderable: object) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(renderable)
    return console.export_text()


# -- slots ------------------------------------------------------------------------------------------------------
def test_slot_activity_says_what_each_slot_runs_how_often_it_lost_and_how_busy_it_was() -> None:
    runs = [run("1.0a0s1", 0, 100, 110), run("2.0a0s1", 0, 110, None, "running", "", trial=2),
            run("3.0a0s1", 1, 100, 105, "lost", ""), run("3.0a1s1", 1, 110, 115, "ok", "NVIDIA H100", trial=3),
            run("4.0a0s1", 2, 112, 114)]  # a slot past --slots 2: the tag once ran with three
    slots = slot_activity(runs, 2, now=120.0, queue={"2.0a0s1": {"where": "Slurm job 17", "state": "RUNNING"}})
    assert [s["slot"] for s in slots] == [0, 1, 2]
    assert slots[0] == {"slot": 0, "trial": 2, "run": 0, "for_s": 10.0, "runs": 1, "lost": 0, "busy_s": 20.0,
                        "busy": 1.0, "hardware": "cpu", "queue": {"where": "Slurm job 17", "state": "RUNNING"}}
    assert (slots[1]["trial"], slots[1]["runs"], slots[1]["lost"], slots[1]["hardware"]) == (None, 2, 1, "NVIDIA H100")
    assert slots[1]["busy"] == pytest.approx(10 / 15)  # busy 10 s of the 15 s since its first run
    assert slot_activity([], 2, now=1.0)[1] == {"slot": 1, "trial": None, "run": None, "for_s": None, "runs": 0,
                                               "lost": 0, "busy_s": 0, "busy": None, "hardware": "", "queue": None}


def test_a_tag_run_one_trial_at_a_time_shows_no_slots_unless_asked(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.run_started("0.0a0s1", 0, 0, 0, 0)
        assert slots_of(ledger) == [] and [s["trial"] for s in slots_of(ledger, always=True)] == [0]
        assert slots_of(ledger, queue={"0.0a0s1": {"where": "Slurm job 3", "state": "PENDING"}})[0]["queue"] == {
            "where": "Slurm job 3", "state": "PENDING"}  # runs queued on a cluster are worth showing
        ledger.set_meta(slots=2)
        assert len(slots_of(ledger)) == 2
    finally:
        ledger.close()


@pytest.mark.parametrize("text", [None, "", "{not json", "[1, 2]"])
def test_a_missing_or_broken_queue_file_shows_no_queue(tmp_path: Path, text: str | None) -> None:
    if text is not None:
        (tmp_path / "queue.json").write_text(text)
    assert queued(tmp_path) == {}


def test_the_queue_file_maps_jobs_to_where_they_wait(tmp_path: Path) -> None:
    (tmp_path / "queue.json").write_text(json.dumps({"1.0a0s1": {"where": "Slurm job 5", "state": "PENDING"}}))
    assert queued(tmp_path) == {"1.0a0s1": {"where": "Slurm job 5", "state": "PENDING"}}


# -- results.tsv --------------------------------------------------------------------------------------------------
def test_results_tsv_keeps_one_line_per_trial_in_order_and_never_breaks_a_row(tmp_path: Path) -> None:
    path = tmp_path / "results.tsv"
    base = TrialRecord(n=0, status=Status.BASELINE, metric=1.0, runs=[1.0, 1.0], commit_sha="a" * 40,
                       metrics={"val_loss": 1.0, "peak_memory_gb": 0.5}, seconds=20.0, description="baseline")
    running = TrialRecord(n=1, commit_sha="b" * 40, description="two lines\nand\ta tab")
    tsv = Tsv(path, "val_loss", [running, base])
    tsv.write()
    lines = path.read_text().splitlines()
    assert lines[0].split("\t")[:5] == ["commit", "val_loss", "memory_gb", "status", "description"]
    assert [line.split("\t")[:5] for line in lines[1:]] == [["aaaaaaa", "1", "0.5", "baseline", "baseline"],
                                                            ["bbbbbbb", "", "", "running", "two lines and a tab"]]
    assert len({len(line.split("\t")) for line in lines}) == 1  # every row has every column
    running.status, running.metric, running.delta, running.runs = Status.KEEP, 0.9, -0.1, [0.9]
    running.reason, running.audit, running.findings = "rebased onto trial 0", "suspicious", [FINDING]
    tsv.update(running)  # the recorded trial's line replaces its running one
    row = dict(zip(lines[0].split("\t"), path.read_text().splitlines()[2].split("\t")))
    assert (row["status"], row["val_loss"], row["delta"], row["runs"], row["reason"]) == (
        "keep", "0.9", "-0.1", "0.9", "rebased onto trial 0")
    assert (row["audit"], row["findings"]) == ("suspicious", "metric-constant (train.py:3,9)")
    assert len(path.read_text().splitlines()) == 3 and not path.with_suffix(".tmp").exists()


def test_a_trial_recorded_last_is_appended_and_anything_else_writes_the_file_again(tmp_path: Path) -> None:
    """Appended only to the file as the Tsv left it: the result is always what a whole write gives."""
    path = tmp_path / "results.tsv"
    trials = [TrialRecord(n=n, status=Status.DISCARD, commit_sha=f"{n:040d}", description=f"idea {n}")
              for n in range(3)]
    tsv = Tsv(path, "val_loss", trials[:1])
    tsv.write()
    inode = path.stat().st_ino
    tsv.update(trials[1])
    assert path.stat().st_ino == inode  # appended: the same file
    path.write_text(path.read_text() + "a line someone added\n")
    tsv.update(trials[2])  # not the file it left: written again
    assert path.stat().st_ino != inode
    trials[1].status = Status.CRASH
    tsv.update(trials[1])  # not the last: written again
    whole = tmp_path / "whole.tsv"
    Tsv(whole, "val_loss", trials).write()
    assert path.read_text() == whole.read_text()


# -- commit messages ----------------------------------------------------------------------------------------------
def test_a_kept_trials_commit_message_tells_its_result_against_the_best_before_it() -> None:
    best = TrialRecord(n=1, status=Status.KEEP, metric=1.0)
    rec = TrialRecord(n=4, status=Status.KEEP, metric=0.9, delta=-0.1, description="wider MLP",
                      reason="rebased onto trial 1", phase="2 Architecture", audit="suspicious", findings=[FINDING])
    assert commit_message(rec, best, 0.028, "val_loss").splitlines() == [
        "trial 4: wider MLP", "", "val_loss: 0.90000 ± 0.028 (best 1.00000 ± 0.028)", "delta: -0.10000",
        "status: keep (rebased onto trial 1)", "phase: 2 Architecture",
        "audit: suspicious (metric-constant (train.py:3,9))"]


def test_a_failed_trials_commit_message_has_no_value_and_no_delta() -> None:
    rec = TrialRecord(n=2, status=Status.TIMEOUT, description="bigger batch", reason="timed out after 600 s")
    assert commit_message(rec, TrialRecord(n=0, metric=2.5), None, "val_bpb").splitlines() == [
        "trial 2: bigger batch", "", "val_bpb: — (best 2.50000)", "status: timeout (timed out after 600 s)"]


# -- status ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    (tmp_path / "nightlab.toml").write_text(toml_dumps(BASE_CONFIG))
    return config.load(tmp_path / "nightlab.toml")


def test_status_before_the_baseline_finished_has_no_numbers(cfg: config.Config) -> None:
    s = status_json(cfg, "t", [TrialRecord(n=0, seconds=3.0)], None, "nightlab/t")
    assert (s["trials"], s["kept"], s["baseline"], s["best"], s["best_trial"], s["delta"]) == (0, 0, None, None, None,
                                                                                              None)
    assert (s["running"], s["seconds"], s["keep_rule"]) == ([0], 3.0, None)
    assert shown(summary(s)).splitlines()[2].split(None, 1)[1].startswith("baseline — → best —")


def test_status_counts_finished_trials_and_names_the_flagged_and_the_held(cfg: config.Config) -> None:
    trials = [TrialRecord(n=0, status=Status.BASELINE, metric=2.0, seconds=60.0),
              TrialRecord(n=1, status=Status.KEEP, metric=1.5, audit="suspicious", cost_usd=0.5, seconds=60.0),
              TrialRecord(n=2, status=Status.HELD, metric=1.0, audit="suspicious", cost_usd=0.25),
              TrialRecord(n=3, status=Status.CRASH, phase="2 Architecture"),
              TrialRecord(n=4, agent_seconds=90.0)]
    evidence = {"deterministic": False, "examples": 200, "eval_se": 0.004, "keep_rule": "seed noise measured"}
    s = status_json(cfg, "t", trials, 0.01, "nightlab/t", evidence=evidence)
    assert (s["trials"], s["kept"], s["best"], s["best_trial"], s["delta"]) == (3, 1, 1.5, 1, -0.5)
    assert (s["flagged"], s["held"], s["running"], s["cost_usd"], s["phase"]) == ([1, 2], [2], [4], 0.75, "")
    text = shown(summary(s))
    assert "baseline 2 ± 0.01 → best 1.5 (trial 1, delta -0.5 (-25.0%); minimize)" in text
    assert "suspicious: trial 1, 2; held: 2 (nightlab accept N / nightlab reject N)" in text
    assert "200 examples per run, σ 0.004 (paired comparisons)" in text
    assert "2.0 min of runs, 1.5 min of the agent" in text and "$0.75" in text


def test_the_trials_table_shows_why_a_trial_failed_and_what_the_audit_found() -> None:
    trials = [TrialRecord(n=1, status=Status.CRASH, description="exit with code 3", reason="exit code 3"),
              TrialRecord(n=2, status=Status.REJECTED, reason="no change to train.py"),
              TrialRecord(n=3, status=Status.KEEP, metric=0.9, delta=-0.1, description="wider", reason="rebased",
                          findings=[FINDING])]
    rows = {line.split("│")[1].strip(): line for line in shown(table(trials, "val_loss")).splitlines()
            if line.count("│") > 2 and line.split("│")[1].strip().isdigit()}
    assert "exit with code 3 [exit code 3]" in rows["1"]
    assert "no change to train.py" in rows["2"] and "[no change" not in rows["2"]
    assert "wider [audit: metric-constant (train.py:3,9)]" in rows["3"] and "rebased" not in rows["3"]
    assert "-0.1" in rows["3"] and "0.9" in rows["3"]
