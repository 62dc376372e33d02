"""The Slurm and SSH executors against the tests' own one-node Slurm cluster and loopback sshd (started here, as
root): per-run overhead against local slots, and Slurm's trials per hour with 1 and 2 slots.

Overhead: N no-op runs submitted one at a time to each executor (its Python API, the process sandbox); for
each, submit → result wall time minus the run's own seconds. Medians in milliseconds. Slurm's share is its
scheduler starting the job (sched/backfill, default settings) and a fresh Python in the job; SSH's is a new
ssh session, a fresh Python on the host and the candidate's copy there (the project synced once, first).

Scaling: scaling.py's real `nightlab run --executor slurm --slots K` on sleep-bound runs; target: 2 slots at
least 1.8× the trials per hour of one.

Usage (root; `make slurm ssh` installed the packages): python benchmarks/clusters.py [N] [S] [M]   (defaults 10 6 8:
N overhead runs, runs sleeping S seconds, M trials per scaling setting)
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from overhead import make_project  # noqa: E402
from scaling import trials_per_hour  # noqa: E402

from nightlab import config  # noqa: E402
from nightlab.config import SshConfig  # noqa: E402
from nightlab.executors import Job, load_executor  # noqa: E402
from nightlab.runspec import run_spec  # noqa: E402
from slurmkit import SlurmCluster, unavailable  # noqa: E402
from sshkit import SshServer, ssh_server  # noqa: E402


def overheads(executor: str, n: int, root: Path, ssh: SshServer) -> list[float]:
    """Milliseconds of submit → result beyond the run's own time, for `n` no-op runs one after another."""
    cfg = config.load(root / "nightlab.toml")
    cfg.sandbox.backend = "process"
    cfg.executor.ssh = SshConfig(**ssh.config())
    options = {"state": root / ".nightlab" / f"bench-{executor}"} if executor == "slurm" else {}
    ex = load_executor(executor, cfg, "process", 1, **options)
    out = []
    try:
        for i in range(n):
            run_dir = root / "runs" / f"{executor}-{i}"
            spec = run_spec(cfg, root, run_dir, seed=0, trial=i + 1)
            start = time.perf_counter()
            files = {"train.py": (root / "train.py").read_bytes()}
            result = ex.submit(Job(id=f"{i + 1}.0a0s1", spec=spec, files=files)).result(timeout=300)
            wall = time.perf_counter() - start
            assert result.status is None, result.reason
            out.append(1000 * (wall - result.seconds))
    finally:
        ex.shutdown()
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    sleep_s = float(sys.argv[2]) if len(sys.argv) > 2 else 6.0
    trials = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    if why := unavailable():
        raise SystemExit(why)
    logging.disable(logging.WARNING)  # the process sandbox warns on every run
    cluster = SlurmCluster().start()
    os.environ.update(cluster.env)
    sshd = ssh_server()
    try:
        ssh = next(sshd)
        with tempfile.TemporaryDirectory(prefix="nightlab-cluster-bench-") as tmp:
            make_project(Path(tmp), 1)
            print(f"per-run overhead, {n} no-op runs each (submit → result, minus the run's own time)")
            for executor in ("local", "slurm", "ssh"):
                ms = overheads(executor, n, Path(tmp), ssh)
                print(f"  {executor:<6} median {statistics.median(ms):8.1f} ms   min {min(ms):8.1f} ms   "
                      f"max {max(ms):8.1f} ms", flush=True)
        print(f"trials per hour, {trials} trials of a {sleep_s:g} s sleep each (process sandbox)")
        one = trials_per_hour("slurm", 1, sleep_s, trials, "process")[0]
        two = trials_per_hour("slurm", 2, sleep_s, trials, "process")[0]
        ratio = two / one
        print(f"  slurm 1 slot {one:6.0f}/h   2 slots {two:6.0f}/h   {ratio:.2f}×  "
              f"(target ≥ 1.8×: {'ok' if ratio >= 1.8 else 'LOW'})")
    finally:
        sshd.close()  # its user, keys and server removed
        cluster.stop()


if __name__ == "__main__":
    main()
