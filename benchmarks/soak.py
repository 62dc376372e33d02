"""Soak: N trials of a no-op train.py through `nightlab run` (process sandbox, scripted agent): nightlab's resident
memory and open file descriptors sampled all along (start, end, max), the report's own process's memory, the time
of `status`, `log --json` and `report` at the end, and the size of `.git` beside what its trial refs need.

Usage: python benchmarks/soak.py [N]     (default 1000)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nlkit import CLI, idea, make_project, sub  # noqa: E402  (a tiny real project, the real CLI)

NOOP = 'STEP = 0\nprint("val_loss: 1.0")\nprint("peak_memory_gb: 0.1")\n'


def sample(pid: int) -> tuple[int, int] | None:
    """(resident KiB, open file descriptors) of a live process."""
    try:
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except (OSError, StopIteration):
        return None


def worker_rss(pid: int) -> int | None:
    """Resident KiB of the report's own process (report/worker.py), a child of nightlab; None when it has none."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    for kid in kids:
        try:
            if b"nightlab.report.worker" in Path(f"/proc/{kid}/cmdline").read_bytes():
                return (s := sample(int(kid))) and s[0]
        except OSError:
            continue
    return None


def timed(proj, *args: str) -> float:
    start = time.monotonic()
    proc = subprocess.run([*CLI, *args], cwd=proj.dir, env=proj.env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return time.monotonic() - start


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True).stdout.split()[0])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    root = Path(tempfile.mkdtemp(prefix="nightlab-soak-"))
    ideas = [idea(f"step {i}", sub("STEP = 0", f"STEP = {i}")) for i in range(1, n + 1)]
    proj = make_project(root, train=NOOP, ideas=ideas, config={"agent": {"max_failures": n + 1}})
    git_before = du(proj.dir / ".git")
    start = time.monotonic()
    err = (root / "run.err").open("w")  # a file, not a pipe: nobody reads a pipe until the end, and it fills up
    proc = subprocess.Popen([*CLI, "run", "--tag", "t", "--max-trials", str(n)], cwd=proj.dir, env=proj.env,
                            stdout=subprocess.DEVNULL, stderr=err)
    samples, drawer = [], []
    while proc.poll() is None:
        if (s := sample(proc.pid)) is not None:
            samples.append((time.monotonic() - start, *s))
        if (w := worker_rss(proc.pid)) is not None:
            drawer.append(w / 1024)
        time.sleep(0.5)  # a benchmark's sampling period, not a test's wait
    assert proc.returncode == 0, (root / "run.err").read_text()[-2000:]
    wall = time.monotonic() - start
    trials = proj.ledger()
    assert [t["n"] for t in trials] == list(range(n + 1)), "trials lost or duplicated"
    rss, fds = [s[1] for s in samples], [s[2] for s in samples]
    settled = [s for s in samples if s[0] > 5.0] or samples  # after the imports and the baseline
    print(f"{n} trials in {wall:.0f} s ({wall / n:.2f} s a trial); statuses: "
          f"{ {s: sum(t['status'] == s for t in trials) for s in {t['status'] for t in trials}} }")
    mib = [r / 1024 for r in rss]
    print(f"resident memory (MiB): start {settled[0][1] / 1024:.1f}, end {mib[-1]:.1f}, max {max(mib):.1f}")
    print(f"open fds: start {settled[0][2]}, end {fds[-1]}, max {max(fds)}")
    if drawer:
        quarters = ", ".join(f"{drawer[len(drawer) * q // 4]:.1f}" for q in (1, 2, 3))
        print(f"the report's process (MiB): first {drawer[0]:.1f}, at 1/4, 1/2, 3/4 of the run {quarters}, "
              f"last {drawer[-1]:.1f}, max {max(drawer):.1f}")
    for args in (("status", "--tag", "t"), ("log", "--tag", "t", "--json"), ("report", "--tag", "t")):
        print(f"nightlab {' '.join(args)}: {timed(proj, *args):.2f} s")
    refs = len(proj.git("for-each-ref", "refs/nightlab/t/").splitlines())
    objects = proj.git("count-objects", "-v")
    print(f".git: {git_before} KiB before, {du(proj.dir / '.git')} KiB after, {refs} trial refs; {objects!r}")
    print(f"state dir: {du(proj.state())} KiB (runs, ledger {du(proj.state() / 'ledger.sqlite')} KiB)")
    print(f"project kept in {root}")


if __name__ == "__main__":
    main()
