"""Added wall time of a sandboxed launch against the bare process: `true` and `python -c pass`, median of N.

    .venv/bin/python benchmarks/sandbox_overhead.py [N]      (default 50; podman gets N // 5, at least 5)

Per command: the bare process; bwrap with the backend's exact command line (`build_argv`, exec'd with an
empty environment) and the whole `BwrapSandbox.run()` (cgroup set-up and removal, log capture, json
status, run-dir clean-up); where podman works, `podman run` with the backend's exact command line and
the whole `PodmanSandbox.run()` (the same, plus `podman inspect` and `rm` afterwards), on the test
suite's image (tests/container_image.py: this machine's Python, so the interpreter is the same file).
Timings on a shared machine are noisy: compare medians taken in the same invocation.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from nightlab.sandbox.bwrap import BwrapSandbox, build_argv
from nightlab.sandbox.container import PodmanSandbox, container_argv
from nightlab.sandbox.probe import probe_engine
from nightlab.sandbox.runtime import choose, engine_env
from nightlab.types import RunSpec

COMMANDS = (("true", "true"), ("python -c pass", "python -c pass"))


def _median_ms(fn, n: int) -> float:
    fn()  # warm the page cache
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _spec(tmp: str, command: str, image: str = "") -> RunSpec:
    spec = RunSpec(command=command, cwd=Path(tmp), run_dir=Path(tmp) / "run", budget_s=1, timeout_s=30, seed=0,
                   trial=0, memory_gb=4, max_pids=4096, max_log_mb=50, max_run_dir_mb=1024, gpus="none", image=image)
    spec.run_dir.mkdir(exist_ok=True)
    (spec.run_dir / spec.log_name).touch()
    return spec


def bwrap_rows(n: int) -> list[tuple]:
    sandbox = BwrapSandbox()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, command in COMMANDS:
            spec = _spec(tmp, command)
            argv, _ = build_argv(spec, sandbox.bwrap)
            bare = argv[argv.index("--") + 1:]
            t_bare = _median_ms(lambda: subprocess.run(bare, check=True), n)
            t_bwrap = _median_ms(lambda: subprocess.run(argv, env={}, check=True), n)
            t_run = _median_ms(lambda: sandbox.run(spec), n)
            rows.append((label, t_bare, t_bwrap, t_run))
    return rows


def podman_rows(n: int, image: str) -> list[tuple]:
    sandbox = PodmanSandbox()
    runtime = choose("podman")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, command in COMMANDS:
            spec = _spec(tmp, command, image)
            bare = [sys.executable, "-c", "pass"] if command.startswith("python") else ["true"]
            t_bare = _median_ms(lambda: subprocess.run(bare, check=True), n)

            def engine() -> None:
                argv = container_argv("podman", spec, f"nightlab-bench-{uuid.uuid4().hex[:8]}", runtime=runtime)
                subprocess.run([*argv[:argv.index("run") + 1], "--rm", *argv[argv.index("run") + 1:]], check=True,
                               env=engine_env(), stdout=subprocess.DEVNULL)

            t_engine = _median_ms(engine, n)
            t_run = _median_ms(lambda: sandbox.run(spec), n)
            rows.append((label, t_bare, t_engine, t_run))
    return rows


def _table(title: str, rows: list[tuple], name: str) -> None:
    print(title)
    print(f"{'command':<16}{'bare':>9}{name:>9}{'added':>9}{'run()':>9}{'added':>9}")
    for label, bare, eng, run in rows:
        print(f"{label:<16}{bare:>7.1f}ms{eng:>7.1f}ms{eng - bare:>+7.1f}ms{run:>7.1f}ms{run - bare:>+7.1f}ms")


def main(n: int) -> None:
    _table(f"bwrap, median of {n} launches (shared, noisy machine)", bwrap_rows(n), "bwrap")
    if not probe_engine("podman")[0]:
        print(f"podman: not measured ({probe_engine('podman')[1]})")
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from container_image import ensure

    m = max(5, n // 5)
    _table(f"podman ({choose('podman').name}), median of {m} launches, image {ensure()}", podman_rows(m, ensure()),
           "podman")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
