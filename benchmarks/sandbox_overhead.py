"""Added wall time of a sandboxed launch against the bare process: `true` and `python -c pass`, median of N.

    .venv/bin/python benchmarks/sandbox_overhead.py [N]      (default 50)

Three ways per command: the bare process; bwrap with the backend's exact command line (`build_argv`,
exec'd with an empty environment); and the whole `BwrapSandbox.run()` (cgroup set-up and removal, log
capture, json status, run-dir clean-up). Timings on a shared machine are noisy: compare medians.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nightlab.sandbox.bwrap import BwrapSandbox, build_argv
from nightlab.types import RunSpec


def _median_ms(fn, n: int) -> float:
    fn()  # warm the page cache
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(n: int) -> None:
    sandbox = BwrapSandbox()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for label, command in (("true", "true"), ("python -c pass", "python -c pass")):
            spec = RunSpec(command=command, cwd=Path(tmp), run_dir=Path(tmp) / "run", budget_s=1, timeout_s=30,
                           seed=0, trial=0, memory_gb=4, max_pids=4096, max_log_mb=50, max_run_dir_mb=1024)
            spec.run_dir.mkdir(exist_ok=True)
            (spec.run_dir / spec.log_name).touch()
            argv, _ = build_argv(spec, sandbox.bwrap)
            bare = argv[argv.index("--") + 1:]
            t_bare = _median_ms(lambda: subprocess.run(bare, check=True), n)
            t_bwrap = _median_ms(lambda: subprocess.run(argv, env={}, check=True), n)
            t_run = _median_ms(lambda: sandbox.run(spec), n)
            rows.append((label, t_bare, t_bwrap, t_run))
    print(f"sandbox overhead, median of {n} launches (shared, noisy machine; bwrap {sandbox.bwrap})")
    print(f"{'command':<16}{'bare':>9}{'bwrap':>9}{'added':>9}{'run()':>9}{'added':>9}")
    for label, bare, bw, run in rows:
        print(f"{label:<16}{bare:>7.1f}ms{bw:>7.1f}ms{bw - bare:>+7.1f}ms{run:>7.1f}ms{run - bare:>+7.1f}ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
