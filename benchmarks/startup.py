"""Start-up of the read-only commands on a big tag: `nightlab --version`, `status`, `status --json`, `log`,
`log --json` on a ledger of N finished trials (default 1000), each timed as a user runs it (a new process, output
to a pipe). Prints the median and the fastest of R runs (default 7) in milliseconds, and the median CPU time (which a
loaded machine does not inflate as much); the goal is under 150 ms. `status` and `log` are measured with
the config already checked (checked_config.py): the first command after an edit of nightlab.toml checks it
with the full schema, and is timed once, apart.

Usage: python benchmarks/startup.py [N] [R]
"""

from __future__ import annotations

import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nightlab.ledger import Ledger, TrialRecord

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import make_project  # noqa: E402  (the benchmarks' no-op project)

# the `nightlab` command as installed beside this interpreter (the console script: what a user runs), else (not
# installed, or installed before its entry point moved to entry.py) the same entry point through `python -m nightlab`
SCRIPT = Path(sys.executable).with_name("nightlab")
INSTALLED = SCRIPT.is_file() and "nightlab.entry" in SCRIPT.read_text()
CLI = [str(SCRIPT)] if INSTALLED else [sys.executable, "-m", "nightlab"]
COMMANDS = (["--version"], ["status"], ["status", "--json"], ["log"], ["log", "--json"])
# for comparison: the full CLI (typer, rich, pydantic), which answers these commands when given other options
FULL = [sys.executable, "-m", "nightlab.cli"]
FULL_COMMANDS = (["status"], ["log"])


def fill(root: Path, n: int) -> None:
    """A tag's ledger with a baseline and n finished trials, as `nightlab run` leaves it (no runs needed)."""
    ledger = Ledger(root / ".nightlab" / "big" / "ledger.sqlite")
    rng = random.Random(0)
    best = 1.0
    try:
        ledger.set_meta(tag="big", branch="nightlab/big", noise=0.001, sessions=1, slots=1)
        for i in range(n + 1):
            value = best - rng.uniform(-0.01, 0.005)
            status = "baseline" if i == 0 else "keep" if value < best else rng.choice(["discard", "crash"])
            best = min(best, value) if status in ("baseline", "keep") else best
            ledger.save(TrialRecord(n=i, status=status, metric=value, metrics={"val_loss": value}, runs=[value],
                                    delta=value - best, description=f"idea {i}: change something in train.py",
                                    hypothesis="it might help", phase="1 Hyperparameters", commit_sha=f"{i:040x}",
                                    seconds=rng.uniform(1, 5), finished=time.time(), agent="scripted"))
    finally:
        ledger.close()


def cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed(root: Path, args: list[str], cli: list[str] = CLI) -> tuple[float, float]:
    """Wall and CPU seconds of one command."""
    start, used = time.perf_counter(), cpu()
    proc = subprocess.run([*cli, *args, *(["--tag", "big"] if args[0] != "--version" else [])], cwd=root,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return time.perf_counter() - start, cpu() - used


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, 1)
        fill(root, n)
        first = timed(root, ["status"])  # checks nightlab.toml with the full schema, and notes that it did
        got: dict[str, list[tuple[float, float]]] = {" ".join(c): [] for c in COMMANDS}
        got |= {f"{' '.join(c)} (full CLI)": [] for c in FULL_COMMANDS}
        for _ in range(repeats):  # interleaved: a load spike hits every command alike
            for args in COMMANDS:
                got[" ".join(args)].append(timed(root, args))
            for args in FULL_COMMANDS:
                got[f"{' '.join(args)} (full CLI)"].append(timed(root, args, FULL))
    print(f"start-up on a ledger of {n} trials ({repeats} runs each; goal: status and log under 150 ms)")
    print(f"  nightlab status, first after a config edit: {1000 * first[0]:6.1f} ms   CPU {1000 * first[1]:6.1f} ms")
    for name, times in got.items():
        wall, used = [w for w, _ in times], [c for _, c in times]
        print(f"  nightlab {name:<25} median {1000 * statistics.median(wall):6.1f} ms   "
              f"fastest {1000 * min(wall):6.1f} ms   CPU {1000 * statistics.median(used):6.1f} ms")


if __name__ == "__main__":
    main()
