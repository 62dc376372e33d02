"""Harness overhead per trial: trial wall time minus the run's own time.

A no-op train.py, the scripted agent, the process sandbox; N trials (default 50). Prints the median
and spread in milliseconds. Usage: python benchmarks/overhead.py [N] [SANDBOX]   (SANDBOX: auto (default), bwrap, process)
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nightlab import config
from nightlab.ledger import Ledger, TrialRecord
from nightlab.session import run_session

CONFIG = """
[project]
editable = ["train.py"]
protected = ["prepare.py"]
[run]
command = "python train.py"
budget_s = 1
timeout_s = 30
[metric]
name = "val_loss"
[keep]
noise_runs = 1
[agent]
name = "scripted"
"""


def make_project(root: Path, n: int) -> None:
    (root / "train.py").write_text("STEP = 0\nprint('val_loss: 1.0')\n")
    (root / "prepare.py").write_text("# fixed\n")
    (root / "nightlab.toml").write_text(CONFIG)
    ideas = [f'[[idea]]\ndescription = "step {i}"\n[[idea.edit]]\nfile = "train.py"\n'
             f'search = "STEP = 0"\nreplace = "STEP = {i}"\n' for i in range(1, n + 1)]
    (root / "ideas.toml").write_text("\n".join(ideas))
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)


def sleep_project(root: Path, sleep_s: float, n: int) -> None:
    """make_project, with a train.py whose run sleeps `sleep_s` seconds (for duty_cycle.py and scaling.py)."""
    make_project(root, n)
    (root / "train.py").write_text(f"import time\nSTEP = 0\ntime.sleep({sleep_s})\nprint('val_loss: 1.0')\n")
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", "sleep"], cwd=root,
                   check=True)


def trial_phase(root: Path, tag: str) -> tuple[list[TrialRecord], list[dict], float]:
    """The trials after the baseline, their runs, and the phase's wall seconds (first trial start → last end)."""
    ledger = Ledger(root / ".nightlab" / tag / "ledger.sqlite")
    try:
        trials = [t for t in ledger.trials() if t.n > 0]
        runs = [r for r in ledger.runs() if r["trial"] > 0]
    finally:
        ledger.close()
    return trials, runs, max(t.finished for t in trials) - min(t.started for t in trials)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    backend = sys.argv[2] if len(sys.argv) > 2 else "auto"
    logging.disable(logging.WARNING)  # the process sandbox warns on every run
    started: dict[int, float] = {}
    overhead: list[float] = []

    def notify(event: str, rec: TrialRecord) -> None:
        if event == "propose":
            started[rec.n] = time.perf_counter()
        elif event == "done" and rec.n in started:
            overhead.append(time.perf_counter() - started[rec.n] - rec.seconds)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, n)
        cfg = config.load(root / "nightlab.toml")
        cfg.sandbox.backend = backend
        run_session(cfg, "bench", n, None, notify)
    ms = sorted(1000 * o for o in overhead)
    q = statistics.quantiles(ms, n=10)
    print(f"harness overhead per trial over {len(ms)} trials (no-op train.py, scripted agent, sandbox {backend})")
    print(f"  median {statistics.median(ms):.1f} ms   p10 {q[0]:.1f} ms   p90 {q[-1]:.1f} ms   max {ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()
