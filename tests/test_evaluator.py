"""The trusted evaluator under bwrap: its own run directory; the training outputs read-only to it."""

from __future__ import annotations

import json
from pathlib import Path

from nlkit import TRAIN, make_project

TRAIN_WRITES_MODEL = "seed = int"
MODEL = '''open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "model.txt"), "w").write("weights")
print("val_loss: 0.0001")  # a claim the evaluator's verdict replaces
seed = int'''
EVALUATE = '''import json, os
train = os.environ["NIGHTLAB_TRAIN_DIR"]
weights = open(os.path.join(train, "model.txt")).read()
try:
    open(os.path.join(train, "model.txt"), "w").write("tampered")
    tamper = "written"
except OSError as e:
    tamper = type(e).__name__
out = os.environ["NIGHTLAB_RUN_DIR"]
json.dump({"val_loss": 0.5, "read_weights": float(weights == "weights"), "tamper_blocked": float(tamper != "written")},
          open(os.path.join(out, "metrics.json"), "w"))
'''


def test_the_evaluator_reads_training_outputs_but_cannot_change_them(tmp_path: Path) -> None:
    config = {"sandbox": {"backend": "bwrap"}, "metric": {"evaluate": "python evaluate.py", "constraints": []}}
    proj = make_project(tmp_path, train=TRAIN.replace(TRAIN_WRITES_MODEL, MODEL), config=config,
                        files={"evaluate.py": EVALUATE})
    proj.run("--max-trials", "0")
    base = proj.trial(0)
    assert base["metrics"]["read_weights"] == 1.0 and base["metrics"]["tamper_blocked"] == 1.0
    assert base["metric"] == 0.5  # the evaluator's value, not training's printed 0.0001
    run_dir = proj.state() / "runs" / "0"
    assert (run_dir / "model.txt").read_text() == "weights"
    assert json.loads((run_dir / "metrics.json").read_text())["val_loss"] == 0.5
    assert (run_dir / "evaluate" / "evaluate.log").exists()
    modes = {m["path"]: m["mode"] for m in json.loads((run_dir / "evaluate" / "sandbox-evaluate.json").read_text())["mounts"]}
    assert modes[str(run_dir.resolve())] == "ro" and modes[str((run_dir / "evaluate").resolve())] == "rw"
