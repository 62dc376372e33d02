"""The selection split end to end: hidden from trials, scored by `verify --select`, which cuts an overfitted tail.

The fixture's train.py reads a per-split offset from data/<split>.txt, so a change can be made to help on
validation only (an overfit) or everywhere (a real win); it reports per-example values on every split.
"""

from __future__ import annotations

import pytest

from nlkit import TRAIN, idea, make_project, one_line_error, sub

# 1.04 at LR 0.1; REAL helps every split, OVERFIT only validation (and hurts elsewhere). 200 examples a split:
# the metric is their mean; each example's value is the loss plus a fixed per-example wiggle that sums to zero.
SPLITS_TRAIN = TRAIN.replace("BONUS = 0.0", "REAL = 0.0\nOVERFIT = 0.0").replace(
    "loss = 1.0 + (LR - 0.3) ** 2 - BONUS + NOISE * ((seed % 3) - 1)", '''\
import json
split = os.environ.get("NIGHTLAB_SPLIT", "val")
hidden = [p for p in ("data/select.txt", "data/test.txt") if os.path.exists(p)]
loss = 1.0 + (LR - 0.3) ** 2 - REAL + NOISE * ((seed % 3) - 1) + float(open(f"data/{split}.txt").read())
loss += -OVERFIT if split == "val" else OVERFIT
examples = [loss + (0.1 if i % 2 else -0.1) * (1 + (i % 7 == 0) * (OVERFIT > 0)) for i in range(200)]
loss = sum(examples) / len(examples)
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "metrics.json"), "w") as f:
    json.dump({f"{split}_loss": loss, "per_example": {f"{split}_loss": examples}}, f)
print(f"saw_hidden: {len(hidden) if split == 'val' else 0}")''').replace(
    'print(f"val_loss: {loss:.6f}")', 'print(f"{split}_loss: {loss:.6f}")')
IDEAS = [idea("a real win", sub("REAL = 0.0", "REAL = 0.25")),  # helps everywhere
         idea("fit the validation split", sub("OVERFIT = 0.0", "OVERFIT = 0.125")),  # val only: kept, wrongly
         idea("a small loss", sub("LR = 0.1", "LR = 0.05"))]  # worse on val: discarded (a near miss of sorts)


def project(tmp_path):
    cfg = {"keep": {"noise_runs": 3, "confirm": 1},
           "data": {"val": ["data/val.txt"], "select": ["data/select.txt"], "test": ["data/test.txt"]},
           "sandbox": {"backend": "bwrap"}}
    proj = make_project(tmp_path, train=SPLITS_TRAIN, config=cfg, ideas=IDEAS)
    for split, offset in (("val", "0.0"), ("select", "0.0625"), ("test", "0.125")):
        proj.write(f"data/{split}.txt", offset + "\n")  # git-ignored, like real data
    return proj


@pytest.mark.slow
def test_verify_select_names_the_state_before_an_overfitted_keep(tmp_path) -> None:
    proj = project(tmp_path)
    proj.run("--max-trials", "3")
    log = proj.log_json()
    assert [t["status"] for t in log] == ["baseline", "keep", "keep", "discard"]
    assert all(t["metrics"]["saw_hidden"] == 0 for t in log if t["metrics"])  # select and test never visible
    assert not any("select" in p.read_text() for p in (proj.state() / "runs").glob("*/brief.md"))

    proc = proj.nl("verify", "--tag", "t", "--seeds", "2", "--select", "--test", env=proj.env | {"COLUMNS": "200"},
                   timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    assert "re-ranking on the selection split" in out and "select_loss" in out and "test_loss" in out
    assert "best on the selection split: trial 1, not the chain's best (trial 2)" in out

    rows = proj.rows("SELECT * FROM verify ORDER BY rowid")
    select = {r["trial"]: r for r in rows if r["kind"] == "select"}
    test = {r["trial"]: r for r in rows if r["kind"] == "select-test"}
    assert set(select) == set(test) == {0, 1, 2, 3}  # the chain and the near miss
    assert select[0]["value"] == pytest.approx(1.04 + 0.0625, abs=0.011)
    assert select[1]["value"] == pytest.approx(0.79 + 0.0625, abs=0.011)
    assert select[2]["value"] == pytest.approx(0.79 + 0.0625 + 0.125, abs=0.011)  # the overfit hurts here
    assert test[2]["value"] > test[1]["value"]  # and on test: the selection split told the truth
    assert select[1]["note"] == "best on the selection split"
    assert proj.git("rev-parse", "refs/nightlab/t/select") == proj.trial(1)["commit_sha"]
    assert proj.git("rev-parse", "nightlab/t") == proj.trial(2)["commit_sha"]  # the branch itself is not moved
    assert not (proj.worktree() / "data" / "select.txt").exists()

    paired = next(r for r in rows if r["kind"] == "val-paired")
    seed_only = next(r for r in rows if r["kind"] == "val")
    assert paired["effect"] == pytest.approx(seed_only["effect"])
    assert paired["ci_high"] - paired["ci_low"] > seed_only["ci_high"] - seed_only["ci_low"]  # evaluation noise too
    status = proj.status_json()
    assert {r["kind"] for r in status["verify"]} == {"val", "val-paired", "test", "select", "select-test"}
    assert status["examples"] == 200 and "paired per-example comparison" in status["keep_rule"]

    assert proj.nl("report", "--tag", "t").returncode == 0
    html = (proj.state() / "report.html").read_text()
    assert "re-ranking on the selection split" in html and "best on the selection split" in html
    assert html.count("trial 2 (keep): fit the validation split") == 1  # one row per state, val beside select
    assert 'id="keep-rule"' in html and "evaluation σ" in html


def test_select_without_a_selection_split_is_one_clear_line(tmp_path) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    proj.run("--max-trials", "1")
    proc = proj.nl("verify", "--tag", "t", "--select")
    assert proc.returncode == 2
    assert "--select needs [data] select" in one_line_error(proc)
