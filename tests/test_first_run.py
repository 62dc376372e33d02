"""`nightlab run` does the project's one-time `[run] prepare` itself when it never ran, and says so."""

from __future__ import annotations

from pathlib import Path

from nlkit import make_project, one_line_error

# The data the training run needs exists only once prepare.py has run.
PREPARE = """import pathlib
pathlib.Path("data").mkdir(exist_ok=True)
pathlib.Path("data/x.txt").write_text("0.25")
print("wrote data/x.txt")
"""
TRAIN = """x = float(open("data/x.txt").read())
print(f"val_loss: {1 + x}")
print("peak_memory_gb: 0.1")
"""
CONFIG = {"run": {"prepare": "python prepare.py"}, "data": {"train": ["data"]}}


def test_run_prepares_a_project_that_never_was(tmp_path: Path) -> None:
    proj = make_project(tmp_path, train=TRAIN, config=CONFIG, files={"prepare.py": PREPARE})
    proc = proj.run("--max-trials", "0")
    assert "first run in this project: running the one-time prepare step `python prepare.py`" in proc.stdout
    assert "prepared; created: data" in proc.stdout
    assert proj.trial(0)["status"] == "baseline" and proj.trial(0)["metric"] == 1.25

    (proj.dir / "data" / "x.txt").write_text("0.5")  # prepared once: a later run leaves the data alone
    proc = proj.run("--max-trials", "0", tag="u")
    assert "prepare" not in proc.stdout
    assert proj.trial(0, tag="u")["metric"] == 1.5
    proc = proj.nl("prepare")  # the command stays, for running it again
    assert proc.returncode == 0 and (proj.dir / "data" / "x.txt").read_text() == "0.25"


def test_a_failing_prepare_stops_the_run_in_one_line(tmp_path: Path) -> None:
    proj = make_project(tmp_path, train=TRAIN, config=CONFIG, files={"prepare.py": "raise SystemExit(3)\n"})
    line = one_line_error(proj.run("--max-trials", "0", ok=False))
    assert line == "error: prepare step `python prepare.py` failed with exit code 3"
    assert not (proj.state() / "ledger.sqlite").exists()
