"""Trustworthy results through the real loop: folds, data integrity, the keep rule's second chance."""

from __future__ import annotations

import json

import pytest

from nlkit import TRAIN, idea, make_project, sub

NOISY = TRAIN.replace("NOISE = 0.0", "NOISE = 0.01")  # seeds 0, 1, 2 → 1.03, 1.04, 1.05: noise 0.01


def test_folds_reported_by_one_run_are_recorded_as_mean_and_std(tmp_path) -> None:
    folds = TRAIN.replace('print(f"val_loss: {loss:.6f}")',
                          'for k, d in enumerate((-0.02, 0.0, 0.02)):\n    print(f"val_loss_fold{k}: {loss + d:.6f}")')
    proj = make_project(tmp_path, train=folds, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    proj.run("--max-trials", "1")
    base, t1 = proj.ledger()
    assert base["metric"] == pytest.approx(1.04) and t1["metric"] == pytest.approx(1.00)
    assert base["metrics"]["val_loss_std"] == pytest.approx(0.02)
    assert t1["status"] == "keep"


def test_a_run_that_writes_to_the_data_is_invalid(tmp_path) -> None:
    tamper = 'open("data/train.txt", "a").write("poisoned\\n")\nseed = int'
    proj = make_project(tmp_path, config={"data": {"train": ["data/train.txt"]}},
                        ideas=[idea("poison the data", sub("seed = int", tamper))])
    proj.write("data/train.txt", "clean\n")  # git-ignored data, linked into the worktree
    proj.run("--max-trials", "1")
    t1 = proj.trial(1)
    assert t1["status"] == "invalid" and "data changed during the run: data/train.txt" in t1["reason"]
    assert proj.trial(0)["status"] == "baseline"


@pytest.mark.parametrize("confirm, status, runs", [(1, "discard", [1.02, 1.03]), (2, "keep", [1.02, 1.03, 1.01])])
def test_a_win_just_under_the_threshold_gets_a_second_chance(tmp_path, confirm: int, status: str, runs) -> None:
    # one run against the 3-run baseline: standard error 0.01 * sqrt(1 + 1/3) ≈ 0.0115, threshold ≈ 0.023.
    # BONUS 0.02 gains 0.02 on its first run (seed 1000): under the threshold, above half of it → re-run.
    proj = make_project(tmp_path, train=NOISY, config={"keep": {"noise_runs": 3, "confirm": confirm}},
                        ideas=[idea("a small real win", sub("BONUS = 0.0", "BONUS = 0.02"))])
    proj.run("--max-trials", "1")
    t1 = proj.trial(1)
    assert t1["runs"] == pytest.approx(runs)
    assert t1["status"] == status  # two runs: gain 0.015 < 0.018; three runs: gain 0.02 > 0.016


PLANT = '''import os
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
for name in ("sandbox.json", "evaluate.log", "sandbox-evaluate.json"):
    os.symlink(os.environ["VICTIM"], os.path.join(run_dir, name))
os.mkdir(os.path.join(run_dir, "metrics.json"))
seed = int'''
EVALUATE = '''import json, os
open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "metrics.json"), "w").write(json.dumps({"val_loss": 0.5}))
'''


@pytest.mark.parametrize("evaluator", [False, True])
def test_nightlab_never_writes_through_links_a_run_planted(tmp_path, evaluator: bool) -> None:
    """The harness writes sandbox.json, metrics.json and the evaluator's log into the run directory, outside
    any sandbox: a link planted there by the run must not make it overwrite a file of the user's choosing."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    config = {"run": {"env": ["VICTIM"]}, "metric": {"constraints": []}}
    if evaluator:
        config["metric"]["evaluate"] = "python evaluate.py"
    proj = make_project(tmp_path, config=config, files={"evaluate.py": EVALUATE}, extra_env={"VICTIM": str(victim)},
                        ideas=[idea("plant links", sub("seed = int", PLANT))])
    proj.run("--max-trials", "1")
    assert victim.read_text() == "precious\n"
    assert proj.trial(1)["status"] == "discard"  # measured as usual: a tie with the baseline
    run_dir = proj.state() / "runs" / "1"
    assert not (run_dir / "sandbox.json").is_symlink() and json.loads((run_dir / "sandbox.json").read_text())
    assert json.loads((run_dir / "metrics.json").read_text())["val_loss"] == (0.5 if evaluator else 1.04)
