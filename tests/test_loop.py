"""The ratchet end to end through the real CLI: keep, discard, tie, crash, timeout, rejected, invalid, noise, resume."""

from __future__ import annotations

import json
import subprocess

import pytest

from scenariokit import SCENARIO, SCENARIO_STATUS, Scenario
from nlkit import BASE_LOSS, PREPARE, TRAIN, content, idea, make_project, sub


# -- the shared scenario: one session walking through every outcome ------------------------------------------
def test_every_outcome_gets_its_status(scenario: Scenario) -> None:
    ledger = scenario.ledger
    assert [r["n"] for r in ledger] == list(range(len(SCENARIO) + 1))
    assert [r["status"] for r in ledger] == SCENARIO_STATUS
    assert [r["description"] for r in ledger[1:]] == [i["description"] for i in SCENARIO]
    assert "the agent has no more ideas" in scenario.proc.stdout


def test_baseline_is_measured_first(scenario: Scenario) -> None:
    base = scenario.ledger[0]
    assert base["status"] == "baseline" and base["description"] == "baseline"
    assert base["metric"] == pytest.approx(BASE_LOSS)
    assert base["commit_sha"] == scenario.before["head"]  # the user's HEAD when the run started
    assert base["metrics"] == {"val_loss": pytest.approx(BASE_LOSS), "peak_memory_gb": pytest.approx(0.1)}


def test_a_clear_improvement_is_kept_and_the_branch_advances_to_it(scenario: Scenario) -> None:
    proj, t1 = scenario.proj, scenario.ledger[1]
    assert t1["status"] == "keep"
    assert t1["metric"] == pytest.approx(1.0)
    assert t1["delta"] == pytest.approx(-0.04)
    assert t1["parent"] == scenario.ledger[0]["commit_sha"]
    # nothing later was kept, so the branch tip is still exactly trial 1's commit
    assert proj.git("rev-parse", "nightlab/t") == t1["commit_sha"]
    assert proj.git("rev-parse", "refs/nightlab/t/trial-1") == t1["commit_sha"]
    assert "LR = 0.3" in proj.git("show", "nightlab/t:train.py")
    assert "LR = 0.3" in (proj.worktree() / "train.py").read_text()  # the worktree sits at the best


def test_a_worse_edit_is_discarded_and_the_branch_does_not_move(scenario: Scenario) -> None:
    proj, t1, t2 = scenario.proj, scenario.ledger[1], scenario.ledger[2]
    assert t2["status"] == "discard"
    assert t2["metric"] == pytest.approx(1.09)
    assert t2["delta"] == pytest.approx(0.09)  # worse, measured against the best (trial 1)
    assert t2["parent"] == t1["commit_sha"]
    assert proj.git("rev-parse", "nightlab/t") == t1["commit_sha"]
    # the discarded commit is kept reachable but is not on the branch
    assert proj.git("rev-parse", "refs/nightlab/t/trial-2") == t2["commit_sha"]
    proc = subprocess.run(["git", "merge-base", "--is-ancestor", t2["commit_sha"], "nightlab/t"], cwd=proj.dir,
                          env=proj.env)
    assert proc.returncode == 1


def test_a_tie_is_discarded(scenario: Scenario) -> None:
    t1, t3 = scenario.ledger[1], scenario.ledger[3]
    assert t3["metric"] == t1["metric"]
    assert t3["delta"] == 0.0
    assert t3["status"] == "discard"


@pytest.mark.parametrize("n, reason", [(4, "exit code 3"), (5, "nan"), (6, "metric missing"), (7, "exit code 1")])
def test_crashes(scenario: Scenario, n: int, reason: str) -> None:
    t = scenario.ledger[n]
    assert t["status"] == "crash"
    assert reason in t["reason"].lower()
    assert t["metric"] is None and t["delta"] is None
    assert t["commit_sha"]  # crashed ideas are committed (and reachable) all the same
    assert (scenario.proj.state() / "runs" / str(n) / "run.log").is_file()


def test_a_metric_printed_before_a_crash_is_not_a_result(scenario: Scenario) -> None:
    log = (scenario.proj.state() / "runs" / "7" / "run.log").read_text()
    assert "val_loss: 1.000000" in log  # the metric was printed...
    t7 = scenario.ledger[7]
    assert (t7["status"], t7["metric"], t7["runs"]) == ("crash", None, [])  # ...but does not count


def test_editing_a_protected_file_is_rejected_and_restored(scenario: Scenario) -> None:
    proj, t8 = scenario.proj, scenario.ledger[8]
    assert t8["status"] == "rejected"
    assert "prepare.py" in t8["reason"]
    assert t8["commit_sha"] == ""  # never committed, never run
    assert not (proj.state() / "runs" / "8" / "run.log").exists()
    assert "tampered" in (proj.state() / "runs" / "8" / "diff.patch").read_text()  # the attempt is on record
    assert (proj.worktree() / "prepare.py").read_text() == PREPARE
    assert "8" not in {r.rsplit("-", 1)[1] for r in proj.git("for-each-ref", "--format=%(refname)",
                                                              "refs/nightlab/t/").split()}


def test_an_edit_that_changes_nothing_editable_is_rejected(scenario: Scenario) -> None:
    t9 = scenario.ledger[9]
    assert t9["status"] == "rejected"
    assert "no change" in t9["reason"] and "train.py" in t9["reason"]


def test_a_new_file_is_rejected_and_removed(scenario: Scenario) -> None:
    t10 = scenario.ledger[10]
    assert t10["status"] == "rejected"
    assert "helper.py" in t10["reason"]
    assert not (scenario.proj.worktree() / "helper.py").exists()
    assert "LR = 0.3\n" in (scenario.proj.worktree() / "train.py").read_text()  # its train.py edit is gone too


def test_a_violated_constraint_is_invalid(scenario: Scenario) -> None:
    t11 = scenario.ledger[11]
    assert t11["status"] == "invalid"
    assert "peak_memory_gb" in t11["reason"] and "5" in t11["reason"]
    assert t11["metric"] is None


def test_a_run_that_modifies_a_protected_file_is_invalid(scenario: Scenario) -> None:
    t12 = scenario.ledger[12]
    assert t12["status"] == "invalid"
    assert "prepare.py" in t12["reason"]
    assert (scenario.proj.worktree() / "prepare.py").read_text() == PREPARE  # restored for the next trial


def test_seeds_and_runs_dirs(scenario: Scenario) -> None:
    for r in scenario.ledger:
        assert r["seed"] == 1000 * r["n"]
        if r["status"] in ("baseline", "keep", "discard"):
            assert len(r["runs"]) == 1  # noise_runs = 1 and no confirmation needed
            assert r["seconds"] > 0
            sandbox = json.loads((scenario.proj.state() / "runs" / str(r["n"]) / "sandbox.json").read_text())
            assert sandbox["seed"] == r["seed"] and sandbox["exit_code"] == 0
        if r["n"] > 0:
            run_dir = scenario.proj.state() / "runs" / str(r["n"])
            assert (run_dir / "brief.md").is_file() and (run_dir / "agent.log").is_file()


# -- timeout --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ignore_term", [False, True], ids=["sleeps", "ignores-SIGTERM"])
def test_a_run_past_the_timeout_is_killed(tmp_path, ignore_term: bool) -> None:
    body = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else ""
    # The run would sleep for an hour: the session ending at all (proj.run has its own bound) shows it was killed.
    slow = sub("seed = int", body + "import time\ntime.sleep(3600)\nseed = int")
    proj = make_project(tmp_path, config={"run": {"timeout_s": 1.5, "grace_s": 0.5}},
                        ideas=[idea("sleep forever", slow)])
    proj.run("--max-trials", "1", timeout=240)
    t1 = proj.trial(1)
    assert t1["status"] == "timeout"
    assert "timed out" in t1["reason"]
    assert t1["seconds"] >= 1.5  # not before its time
    assert t1["metric"] is None


# -- noise and confirmation -----------------------------------------------------------------------------------
def test_baseline_noise_runs_and_a_confirmation_run(tmp_path) -> None:
    # NOISE = 0.01: seeds 0, 1, 2 give 1.03, 1.04, 1.05 → noise 0.01, auto threshold 2 x 0.01.
    train = TRAIN.replace("NOISE = 0.0", "NOISE = 0.01")
    proj = make_project(tmp_path, train=train, config={"keep": {"noise_runs": 3, "confirm": 1}}, ideas=[
        # gain 0.03 on its first run (seed 1000): above the threshold but under twice it → confirm with seed 1001
        idea("a marginal win", sub("BONUS = 0.0", "BONUS = 0.03")),
        # gain far beyond twice the threshold: kept on one run
        idea("a clear win", sub("BONUS = 0.03", "BONUS = 0.3")),
    ])
    proj.run("--max-trials", "2")
    ledger = proj.ledger()
    base, t1, t2 = ledger
    assert base["runs"] == pytest.approx([1.03, 1.04, 1.05])
    assert base["metric"] == pytest.approx(1.04)
    state = proj.state()
    seeds = [json.loads((state / "runs" / "0" / d / "sandbox.json").read_text())["seed"]
             for d in ("", "repeat-1", "repeat-2")]
    assert len(set(seeds)) == 3
    for d in ("", "repeat-1", "repeat-2"):
        assert "val_loss:" in (state / "runs" / "0" / d / "run.log").read_text()
    assert proj.status_json()["noise"] == pytest.approx(0.01)

    assert len(t1["runs"]) == 2  # the confirmation run
    assert t1["runs"] == pytest.approx([1.01, 1.02])
    assert t1["metric"] == pytest.approx(1.015)
    assert t1["status"] == "keep"
    assert (state / "runs" / "1" / "repeat-1" / "run.log").is_file()
    seeds = [json.loads((state / "runs" / "1" / d / "sandbox.json").read_text())["seed"] for d in ("", "repeat-1")]
    assert seeds[0] != seeds[1]

    assert len(t2["runs"]) == 1 and t2["status"] == "keep"
    assert proj.git("rev-parse", "nightlab/t") == t2["commit_sha"]
    assert "± 0.01" in proj.git("log", "-1", "--format=%B", "refs/nightlab/t/trial-1")


def test_a_change_within_the_noise_is_not_kept(tmp_path) -> None:
    """With noise 0.01, an edit that does nothing for the metric is discarded whatever its seed brings."""
    train = TRAIN.replace("NOISE = 0.0", "NOISE = 0.01")
    proj = make_project(tmp_path, train=train, config={"keep": {"noise_runs": 3}}, ideas=[
        idea(f"no-op {k}", sub("# knobs", "# knobs" + "!" * (k + 1))) for k in range(3)])
    proj.run("--max-trials", "3")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "discard", "discard", "discard"]


def test_maximize_goal_keeps_larger_values(tmp_path) -> None:
    proj = make_project(tmp_path, config={"metric": {"goal": "maximize"}}, ideas=[
        idea("lower the loss", sub("LR = 0.1", "LR = 0.3")),  # smaller is worse here
        idea("raise the loss", sub("LR = 0.1", "LR = 0.0")),
    ])
    proj.run("--max-trials", "2")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "discard", "keep"]
    assert proj.trial(2)["delta"] == pytest.approx(0.05)


# -- resume ---------------------------------------------------------------------------------------------------
def test_resume_appends_trials_without_duplicates(tmp_path) -> None:
    proj = make_project(tmp_path, ideas=[idea(f"LR {v}", sub(f"LR = {a}", f"LR = {v}"))
                                         for a, v in [(0.1, 0.2), (0.2, 0.25), (0.25, 0.28), (0.28, 0.3)]])
    proj.run("--max-trials", "2")
    assert [r["n"] for r in proj.ledger()] == [0, 1, 2]
    first = {r["n"]: r["commit_sha"] for r in proj.ledger()}

    proj.run("--max-trials", "4")
    ledger = proj.ledger()
    assert [r["n"] for r in ledger] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in ledger] == ["baseline", "keep", "keep", "keep", "keep"]
    assert [r["description"] for r in ledger] == ["baseline", "LR 0.2", "LR 0.25", "LR 0.28", "LR 0.3"]
    assert {n: ledger[n]["commit_sha"] for n in first} == first  # the first session's trials are untouched
    assert proj.git("rev-parse", "nightlab/t") == ledger[4]["commit_sha"]
    log = proj.git("log", "--format=%s", "nightlab/t").splitlines()
    assert log[:4] == ["trial 4: LR 0.3", "trial 3: LR 0.28", "trial 2: LR 0.25", "trial 1: LR 0.2"]
    assert len(list((proj.state() / "runs").iterdir())) == 5

    # a third invocation with the same limit has nothing to do
    proj.run("--max-trials", "4")
    assert [r["n"] for r in proj.ledger()] == [0, 1, 2, 3, 4]
    tsv = (proj.state() / "results.tsv").read_text().splitlines()
    assert len(tsv) == 1 + 5


# -- trusted evaluator (only its metrics count) ------------------------------------------------------------------------
EVALUATE = '''import json, os
from pathlib import Path
out = Path(os.environ["NIGHTLAB_RUN_DIR"]) / "metrics.json"
out.write_text(json.dumps({"val_loss": 1.04, "peak_memory_gb": 0.1}))
'''


def test_with_a_trusted_evaluator_stdout_claims_do_not_count(tmp_path) -> None:
    cheat = TRAIN.replace('print(f"val_loss: {loss:.6f}")', 'print("val_loss: 0.0")')
    proj = make_project(tmp_path, train=cheat, files={"evaluate.py": EVALUATE},
                        config={"metric": {"evaluate": "python evaluate.py"},
                                "project": {"protected": ["prepare.py", "evaluate.py"]}})
    proj.run("--max-trials", "0")
    assert proj.trial(0)["metric"] == pytest.approx(1.04)


# -- limits and phases -----------------------------------------------------------------------------------------
def test_the_loop_stops_after_max_failures_in_a_row(tmp_path) -> None:
    notes = [idea(f"notes {k}", content(f"note {k}\n", file="scratchpad.md")) for k in range(4)]
    proj = make_project(tmp_path, config={"agent": {"max_failures": 2}}, ideas=notes)
    proc = proj.run("--max-trials", "10")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "rejected", "rejected"]
    assert "failed 2 times in a row" in proc.stdout


def test_a_success_resets_the_failure_count(tmp_path) -> None:
    notes = lambda k: idea(f"notes {k}", content(f"note {k}\n", file="scratchpad.md"))  # noqa: E731
    proj = make_project(tmp_path, config={"agent": {"max_failures": 2}},
                        ideas=[notes(1), idea("raise LR", sub("LR = 0.1", "LR = 0.3")), notes(2), notes(3), notes(4)])
    proj.run("--max-trials", "10")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "rejected", "keep", "rejected", "rejected"]


def test_hours_zero_runs_only_the_baseline(tmp_path) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    proc = proj.run("--hours", "0")
    assert [r["n"] for r in proj.ledger()] == [0]
    assert "--hours" in proc.stdout


def test_phases_advance_by_trial_count(tmp_path) -> None:
    proj = make_project(tmp_path, config={"phases": {"trials": 1}}, ideas=[
        idea(f"LR {v}", sub(f"LR = {a}", f"LR = {v}")) for a, v in [(0.1, 0.2), (0.2, 0.25), (0.25, 0.28)]])
    proj.run("--max-trials", "3")
    assert [r["phase"] for r in proj.ledger()] == ["1 Hyperparameters", "1 Hyperparameters", "2 Architecture",
                                                   "2 Architecture"]
    assert "Phase 2 — Architecture" in (proj.state() / "runs" / "2" / "brief.md").read_text()
    assert proj.status_json()["phase"] == "2 Architecture"
    assert "phase: 2 Architecture" in proj.git("log", "-1", "--format=%B", "refs/nightlab/t/trial-3")
