"""`nightlab verify` end to end on tiny real projects: fresh seeds, ablation, the test split, the ledger."""

from __future__ import annotations

import fcntl
import json

import pytest

from nlkit import TRAIN, Project, idea, make_project, one_line_error, sub

# TRAIN with noise 0.01 over seed % 3, the split it is asked for, and whether it could see the test data.
SPLIT_TRAIN = TRAIN.replace("NOISE = 0.0", "NOISE = 0.01").replace('print("step 1/1: done")', '''\
split = os.environ.get("NIGHTLAB_SPLIT", "val")
saw_test = os.path.exists("data/test.txt")
if split == "test":
    loss += float(open("data/test.txt").read())
if os.environ.get("NIGHTLAB_FINAL") == "1":
    loss -= 0.125
print("step 1/1: done")
print(f"saw_test: {int(saw_test)}")''').replace('print(f"val_loss: {loss:.6f}")', 'print(f"{split}_loss: {loss:.6f}")')
IDEAS = [idea("raise LR", sub("LR = 0.1", "LR = 0.3")),  # 1.04 → 1.00
         idea("add a bonus", sub("BONUS = 0.0", "BONUS = 0.5")),  # 1.00 → 0.50
         idea("a no-op", sub("# knobs", "# the knobs"))]  # discarded


def searched(tmp_path, config: dict | None = None, train: str = SPLIT_TRAIN, trials: int = 3, **kw) -> Project:
    cfg = {"keep": {"noise_runs": 3, "confirm": 1}, "data": {"test": ["data/test.txt"]}} | (config or {})
    proj = make_project(tmp_path, train=train, config=cfg, ideas=IDEAS, **kw)
    proj.write("data/test.txt", "0.25\n")  # git-ignored, like real data
    proj.run("--max-trials", str(trials))
    return proj


def verify_rows(proj: Project) -> list[dict]:
    return proj.rows("SELECT * FROM verify ORDER BY rowid")


def test_verify_measures_the_effect_ablates_and_tests(tmp_path) -> None:
    proj = searched(tmp_path)
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep", "keep", "discard"]
    assert all(r["metrics"]["saw_test"] == 0 for r in proj.ledger())  # trials never see the test split
    log_keys = [set(t) for t in proj.log_json()]
    best = proj.trial(2)["commit_sha"]

    proc = proj.nl("verify", "--tag", "t", "--seeds", "3", "--ablate", "--test", env=proj.env | {"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "best vs baseline" in proc.stdout and "without trial 1" in proc.stdout and "test_loss" in proc.stdout

    rows = {r["label"]: r for r in verify_rows(proj)}
    assert set(rows) == {"val_loss: best vs baseline", "without trial 1: raise LR", "without trial 2: add a bonus",
                         "test_loss: best vs baseline"}
    val = rows["val_loss: best vs baseline"]
    assert val["reference"] == pytest.approx(1.04) and val["value"] == pytest.approx(0.50)
    assert val["effect"] == pytest.approx(0.54) and val["ci_low"] < 0.54 < val["ci_high"]
    assert val["p_value"] < 0.001 and val["n"] == val["n_ref"] == 3
    # leave-one-out: the best without each kept change, measured exactly
    assert rows["without trial 1: raise LR"]["reference"] == pytest.approx(0.54)
    assert rows["without trial 1: raise LR"]["effect"] == pytest.approx(0.04)
    assert rows["without trial 2: add a bonus"]["effect"] == pytest.approx(0.50)
    test = rows["test_loss: best vs baseline"]
    assert test["reference"] == pytest.approx(1.29) and test["value"] == pytest.approx(0.75)

    # fresh seeds, far from the loop's; the test data was there for the test runs only
    seeds = json.loads(val["seeds"])
    assert len(set(seeds)) == 3 and min(seeds) >= 10 ** 9
    runs = proj.state() / "verify" / "1"
    assert {json.loads(p.read_text())["seed"] for p in (runs / "best").glob("*/sandbox.json")} == set(seeds)
    assert all(json.loads(p.read_text())["saw_test"] == 1 for p in (runs / "test-best").glob("*/metrics.json"))
    assert all(json.loads(p.read_text())["saw_test"] == 0 for p in (runs / "best").glob("*/metrics.json"))
    assert not (proj.worktree() / "data" / "test.txt").exists()

    # the worktree and the branch are back at the best commit, clean
    assert proj.git("rev-parse", "nightlab/t") == best
    assert proj.git("-C", str(proj.worktree()), "rev-parse", "HEAD") == best
    assert proj.git("-C", str(proj.worktree()), "status", "--porcelain", "--untracked-files=no") == ""

    status = proj.status_json()
    assert [r["label"] for r in status["verify"]] == list(rows)
    assert status["verify"][0]["runs"] == pytest.approx([0.5, 0.5, 0.5], abs=0.011)
    assert [set(t) for t in proj.log_json()] == log_keys  # log --json is unchanged
    assert "last verify" in proj.nl("status", "--tag", "t").stdout

    # a second verify is a new run in the ledger, on new seeds; a resumed search still works
    assert proj.nl("verify", "--tag", "t", "--seeds", "2").returncode == 0
    second = [r for r in verify_rows(proj) if r["run"] == 2]
    assert len(second) == 1 and set(json.loads(second[0]["seeds"])).isdisjoint(seeds)
    assert proj.status_json()["verify"][0]["run"] == 2
    proj.ideas(*IDEAS, idea("another no-op", sub("# knobs", "# knobs!")))
    proj.run("--max-trials", "4")
    assert proj.trial(4)["parent"] == best


def test_final_retrains_before_the_test_evaluation(tmp_path) -> None:
    proj = searched(tmp_path, trials=2)
    proc = proj.nl("verify", "--tag", "t", "--seeds", "2", "--test", "--final")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    test = next(r for r in verify_rows(proj) if r["kind"] == "test")
    assert "retrained on train+val" in test["label"] and test["final"] == 1
    assert test["reference"] == pytest.approx(1.29 - 0.125, abs=0.011)  # NIGHTLAB_FINAL reached the run


EVALUATE = '''import json, os
from pathlib import Path
trained = Path(os.environ["NIGHTLAB_TRAIN_DIR"]) / "model.txt"
loss = float(trained.read_text())
name = "val_loss"
if os.environ.get("NIGHTLAB_SPLIT") == "test":
    loss, name = loss + float(open("data/test.txt").read()), "test_loss"
(Path(os.environ["NIGHTLAB_RUN_DIR"]) / "metrics.json").write_text(json.dumps({name: loss, "peak_memory_gb": 0.1}))
'''


def test_a_test_command_reads_the_training_outputs(tmp_path) -> None:
    """Training writes a model; the trusted evaluator and the test command find it in NIGHTLAB_TRAIN_DIR."""
    train = TRAIN.replace('print(f"val_loss: {loss:.6f}")', 'open(os.environ["NIGHTLAB_RUN_DIR"] + "/model.txt", "w").write(str(loss))')
    proj = searched(tmp_path, train=train, trials=2, files={"evaluate.py": EVALUATE}, config={
        "metric": {"evaluate": "python evaluate.py", "test_command": "python evaluate.py"},
        "project": {"protected": ["prepare.py", "evaluate.py"]}})
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep", "keep"]
    assert proj.trial(0)["metric"] == pytest.approx(1.04)
    proc = proj.nl("verify", "--tag", "t", "--seeds", "2", "--test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    test = next(r for r in verify_rows(proj) if r["kind"] == "test")
    assert test["reference"] == pytest.approx(1.29) and test["value"] == pytest.approx(0.75)


def test_verify_refuses_while_a_run_holds_the_tag(tmp_path) -> None:
    proj = searched(tmp_path, trials=1)
    with open(proj.state() / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live `nightlab run` holds
        line = one_line_error(proj.nl("verify", "--tag", "t", "--seeds", "2"))
    assert "another `nightlab run` is using tag 't'" in line
    assert verify_rows(proj) == []


@pytest.mark.parametrize("args, message", [
    (["--final"], "use it with --test"),
    (["--seeds", "1"], "--seeds"),
    (["--tag", "nope"], "no run with tag 'nope'"),
])
def test_verify_usage_errors(tmp_path, args: list[str], message: str) -> None:
    proj = make_project(tmp_path)
    proj.run("--max-trials", "0")
    tag = [] if "--tag" in args else ["--tag", "t"]
    assert message in one_line_error(proj.nl("verify", *tag, *args))


def test_verify_needs_a_kept_change_and_a_test_split(tmp_path) -> None:
    proj = make_project(tmp_path)
    proj.run("--max-trials", "0")
    assert "kept nothing yet" in one_line_error(proj.nl("verify", "--tag", "t", "--seeds", "2"))
    assert "[data] test" in one_line_error(proj.nl("verify", "--tag", "t", "--test"))


def test_under_bwrap_the_test_split_is_open_to_the_test_runs_only(tmp_path) -> None:
    proj = searched(tmp_path, config={"sandbox": {"backend": "bwrap"}}, trials=2)
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep", "keep"]
    assert all(r["metrics"]["saw_test"] == 0 for r in proj.ledger())
    proc = proj.nl("verify", "--tag", "t", "--seeds", "2", "--test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = proj.state() / "verify" / "1"
    assert {json.loads(p.read_text())["backend"] for p in runs.glob("*/*/sandbox.json")} == {"bwrap"}
    assert [json.loads(p.read_text())["saw_test"] for p in sorted(runs.glob("test-*/*/metrics.json"))] == [1] * 4
    assert [json.loads(p.read_text())["saw_test"] for p in sorted(runs.glob("best/*/metrics.json"))] == [0] * 2
    test = next(r for r in verify_rows(proj) if r["kind"] == "test")
    assert test["value"] == pytest.approx(0.75, abs=0.011)


def test_a_kept_change_that_a_later_one_rewrote_cannot_be_ablated(tmp_path) -> None:
    proj = make_project(tmp_path, train=SPLIT_TRAIN, config={"keep": {"noise_runs": 3, "confirm": 1}}, ideas=[
        idea("bonus 0.2", sub("BONUS = 0.0", "BONUS = 0.2")), idea("bonus 0.5", sub("BONUS = 0.2", "BONUS = 0.5"))])
    proj.run("--max-trials", "2")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep", "keep"]
    assert proj.nl("verify", "--tag", "t", "--seeds", "2", "--ablate").returncode == 0
    rows = {r["label"]: r for r in verify_rows(proj)}
    assert rows["without trial 1: bonus 0.2"]["note"] == "cannot be taken out cleanly (later changes overlap)"
    assert rows["without trial 1: bonus 0.2"]["effect"] is None
    assert rows["without trial 2: bonus 0.5"]["effect"] == pytest.approx(0.3)  # back to bonus 0.2: 0.84 vs 0.54


def test_verify_killed_halfway_leaves_the_branch_at_the_best(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import time

    from nlkit import CLI

    hold = tmp_path / "hold"  # verify's runs wait while it exists; the search's runs ran before it did
    train = SPLIT_TRAIN.replace('print("step 1/1: done")', f'''import time
while os.path.exists({str(hold)!r}):
    time.sleep(0.05)
print("step 1/1: done")''', 1)
    proj = searched(tmp_path, train=train)
    best = proj.git("rev-parse", "nightlab/t")
    hold.touch()
    proc = subprocess.Popen([*CLI, "verify", "--tag", "t", "--seeds", "2"], cwd=proj.dir, env=proj.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((proj.state() / "verify").rglob("run.log")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-way through the baseline's first verify run
    proc.wait()
    hold.unlink()
    assert proj.git("rev-parse", "nightlab/t") == best  # before: left at the baseline's commit
    assert proj.git("-C", str(proj.worktree()), "rev-parse", "HEAD") == best
    proj.nl("verify", "--tag", "t", "--seeds", "2", timeout=120).check_returncode()  # and verify runs again
