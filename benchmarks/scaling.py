"""Trials per hour with 1, 2 and 4 slots, on the local and the Ray executor.

Each trial's run sleeps S seconds and prints a constant metric; the scripted agent sets STEP to the trial
number, so every trial is a real, distinct edit and a tie (discarded: no keep, so no trial is rebased and
run again). Each setting is one real `nightlab run --executor E --slots K --max-trials M --sandbox SANDBOX`
in a fresh project; the trial phase's wall time is read from the ledger (first trial started → last trial
finished, the baseline excluded), so the Ray cluster's start-up is not counted. Target: K slots reach at
least 0.9·K times the trials per hour of one. The runs only sleep, so this measures the harness and the
executor, not the machine's cores: it scales on a 2-core machine too.

Usage: python benchmarks/scaling.py [S] [M] [SANDBOX] [EXECUTORS]     (defaults 2 12 process local,ray)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from overhead import sleep_project, trial_phase  # noqa: E402  (the no-op project, its runs sleeping)

CLI = [sys.executable, "-c", "from nightlab.cli import main; main()"]


def trials_per_hour(executor: str, slots: int, sleep_s: float, trials: int, sandbox: str) -> tuple[float, int]:
    """Trials per hour of the trial phase, and how many runs it took (more than `trials` means retries)."""
    with tempfile.TemporaryDirectory(prefix="nightlab-scaling-") as tmp:
        root = Path(tmp)
        sleep_project(root, sleep_s, trials)
        proc = subprocess.run([*CLI, "run", "--tag", "scale", "--executor", executor, "--slots", str(slots),
                               "--max-trials", str(trials), "--sandbox", sandbox], cwd=root, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"nightlab run failed ({executor}, {slots} slots):\n{proc.stdout}\n{proc.stderr}")
        done, runs, wall = trial_phase(root, "scale")
        assert len(done) == trials and all(t.status == "discard" for t in done), [t.status for t in done]
        return len(done) * 3600 / wall, len(runs)


def main() -> None:
    sleep_s = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    trials = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    sandbox = sys.argv[3] if len(sys.argv) > 3 else "process"
    executors = sys.argv[4].split(",") if len(sys.argv) > 4 else ["local", "ray"]
    print(f"{trials} trials of a {sleep_s:g} s sleep each, sandbox {sandbox}; "
          f"ideal: {3600 / sleep_s:.0f} trials/h per slot")
    print(f"{'executor':<9} {'slots':>5} {'trials/h':>9} {'× 1 slot':>9} {'target':>7} {'runs':>5}")
    for executor in executors:
        one = None
        for slots in (1, 2, 4):
            rate, runs = trials_per_hour(executor, slots, sleep_s, trials, sandbox)
            one = one or rate
            ratio = rate / one
            mark = "ok" if ratio >= 0.9 * slots else "LOW"
            print(f"{executor:<9} {slots:>5} {rate:>9.0f} {ratio:>8.2f}× {0.9 * slots:>6.1f}× {runs:>5}  {mark}",
                  flush=True)


if __name__ == "__main__":
    main()
