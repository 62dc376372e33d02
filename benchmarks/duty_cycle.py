"""Duty cycle of one slot: the share of wall time it spends training, sequential vs pipelined.

A fake agent takes A seconds to propose (it sleeps, then changes one constant); a fake training run
takes B seconds (it sleeps). Each setting runs N trials through the real loop (`run_session`, local
executor, process sandbox) and reads the ledger: duty = time inside runs / wall time from the first
proposal to the last result (the baseline excluded). A=3, B=30 is the real 30 s agent / 300 s run
scaled by 1/10. Target: at least 97% pipelined.

Usage: python benchmarks/duty_cycle.py [A] [B] [N]     (defaults 3 30 6)
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
import time
from pathlib import Path

from nightlab import config
from nightlab.session import run_session
from nightlab.types import Brief, Proposal, Status

sys.path.insert(0, str(Path(__file__).parent))
from overhead import sleep_project, trial_phase  # noqa: E402  (the no-op project, its runs sleeping)

AGENT_SECONDS = 3.0


class SleepyAgent:
    """Thinks for AGENT_SECONDS, then sets STEP to the trial number (every trial is a real, distinct edit)."""

    def __init__(self, cfg: object, state_dir: Path) -> None:
        pass

    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        time.sleep(AGENT_SECONDS)
        path = Path(workspace) / "train.py"
        path.write_text(re.sub(r"STEP = \d+", f"STEP = {brief.trial}", path.read_text()))
        return Proposal(description=f"step {brief.trial}")

    def observe(self, trial: int, status: Status, metric: float | None) -> None:
        pass


def measure(run_s: float, n: int, pipeline: bool) -> tuple[float, float, float]:
    """Of n trials after the baseline: duty from the first proposal, duty from the first run, wall seconds."""
    with tempfile.TemporaryDirectory(prefix="nightlab-duty-") as tmp:
        root = Path(tmp)
        sleep_project(root, run_s, 0)
        cfg = config.load(root / "nightlab.toml")
        config.override(cfg, "sandbox.backend", "process", "--sandbox")
        config.override(cfg, "agent.name", "__main__:SleepyAgent", "--agent")
        config.override(cfg, "executor.pipeline", pipeline, "--pipeline")
        config.override(cfg, "run.timeout_s", run_s * 3 + 30, "--timeout")
        run_session(cfg, "duty", n, None, lambda event, rec: None)
        _, runs, wall = trial_phase(root, "duty")
        busy = sum(r["finished"] - r["started"] for r in runs)
        steady = max(r["finished"] for r in runs) - min(r["started"] for r in runs)
        return busy / wall, busy / steady, wall


def main() -> None:
    global AGENT_SECONDS
    AGENT_SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    run_s = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    logging.disable(logging.WARNING)  # the process sandbox warns on every run
    print(f"agent {AGENT_SECONDS:g} s, run {run_s:g} s, {n} trials, one slot")
    print("duty: time in runs / wall time, from the first proposal (all) or from the first run (steady)")
    print(f"{'mode':<11} {'all':>7} {'steady':>7} {'ideal':>7} {'wall s':>8}")
    for pipeline in (False, True):
        duty, steady, wall = measure(run_s, n, pipeline)
        ideal = 1.0 if pipeline else run_s / (run_s + AGENT_SECONDS)
        print(f"{'pipelined' if pipeline else 'sequential':<11} {100 * duty:>6.1f}% {100 * steady:>6.1f}% "
              f"{100 * ideal:>6.1f}% {wall:>8.1f}")


if __name__ == "__main__":
    main()
