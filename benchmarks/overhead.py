"""Harness overhead per trial as a user sees it: the real CLI (`nightlab run`, default report setting, output to
a pipe), a no-op train.py, the scripted agent. A trial's wall time is the time from one trial's result line to
the next one's (everything the harness does for it: brief, proposal, commit, sandboxed run, decision, record,
views); its overhead is that minus the run's own time (the ledger's run seconds). Beside it, the floor: a plain
`subprocess.run` of the same command. Sessions are interleaved (process, bwrap, floor, ...); medians and p90 over
all trials of all sessions, and over each session's second half alone (the report's process is started with the
session and imports matplotlib while the first trials run: a night's steady state is the second half). On a
loaded machine wall times swing; the CPU time a session takes (nightlab, its git processes and the runs, start-up
included) per trial, beside the floor's per run, shows the work itself.

Usage: python benchmarks/overhead.py [TRIALS] [SESSIONS] [SANDBOX...]   (default 30 trials, 3 sessions, process bwrap)
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from nightlab.ledger import Ledger, TrialRecord

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


CLI = [sys.executable, "-m", "nightlab.cli"]


def cpu() -> float:
    """CPU seconds of the children this process waited for (and of theirs)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def session(n: int, backend: str) -> tuple[list[float], float]:
    """One `nightlab run` of n trials: each trial's wall time (result line to result line) minus its run's time;
    and the CPU seconds of the whole session per trial."""
    used = cpu()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, n)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [*CLI, "run", "--tag", "bench", "--max-trials", str(n), "--sandbox", backend]
        done: dict[int, float] = {}
        with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                words = line.split()
                if len(words) > 2 and words[0] == "trial" and words[1].isdigit():  # a result line: "trial  3  keep"
                    done[int(words[1])] = time.perf_counter()
        assert proc.returncode == 0, f"nightlab run failed ({proc.returncode})"
        trials, _, _ = trial_phase(root, "bench")
    seconds = {t.n: t.seconds for t in trials}
    return [done[k] - done[k - 1] - seconds[k] for k in range(1, n + 1) if k in done and k - 1 in done], \
        (cpu() - used) / (n + 1)


def floor(n: int) -> tuple[list[float], float]:
    """The same command run n times with a plain subprocess.run: what no harness can go under."""
    used = cpu()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, 1)
        out = []
        for _ in range(n):
            start = time.perf_counter()
            subprocess.run([sys.executable, "train.py"], cwd=root, capture_output=True, check=True)
            out.append(time.perf_counter() - start)
    return out, (cpu() - used) / n


def summary(seconds: list[float]) -> str:
    ms = sorted(1000 * s for s in seconds)
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[-1] if len(ms) > 1 else ms[0]
    return f"median {statistics.median(ms):6.1f} ms   p90 {p90:6.1f} ms   max {ms[-1]:6.1f} ms   ({len(ms)} trials)"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    sessions = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    backends = sys.argv[3:] or ["process", "bwrap"]
    got: dict[str, list[float]] = defaultdict(list)
    late: dict[str, list[float]] = defaultdict(list)  # each session's second half
    cpus: dict[str, list[float]] = defaultdict(list)
    for _ in range(sessions):  # interleaved: a load spike hits every column alike
        for backend, (wall, used) in [*((b, session(n, b)) for b in backends), ("floor", floor(n))]:
            got[backend] += wall
            late[backend] += wall[len(wall) // 2:]
            cpus[backend].append(used)
    print(f"per-trial overhead of `nightlab run` ({n} trials x {sessions} sessions, no-op train.py, scripted agent; "
          "trial wall time minus the run's own time)")
    for backend in backends:
        print(f"  {backend:<8} {summary(got[backend])}   CPU {1000 * statistics.median(cpus[backend]):5.1f} ms a trial")
        print(f"  {'':<8} {summary(late[backend])}   (each session's second half)")
    print("floor: a plain subprocess.run of `python train.py` (its whole time)")
    print(f"  {'floor':<8} {summary(got['floor'])}   CPU {1000 * statistics.median(cpus['floor']):5.1f} ms a run")


if __name__ == "__main__":
    main()
