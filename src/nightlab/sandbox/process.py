"""No isolation: the run is a plain child process in its own session. Chosen only explicitly."""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import time

from nightlab.sandbox import argv, run_env
from nightlab.types import RunResult, RunSpec

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    # A harness killed with -9 must not leave a training run behind holding the GPU.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class ProcessSandbox:
    name = "process"
    isolated = False

    def run(self, spec: RunSpec) -> RunResult:
        log.warning("sandbox 'process': trial %s runs WITHOUT isolation (network, files, secrets reachable)",
                    spec.trial)
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = spec.run_dir / spec.log_name
        start = time.monotonic()
        with log_path.open("wb") as out:
            proc = subprocess.Popen(argv(spec.command), cwd=spec.cwd,
                                    env=run_env(spec), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
            timed_out = False
            try:
                timed_out = not _wait(proc, time.monotonic() + spec.timeout_s)
                if timed_out:
                    self._stop(proc, spec.grace_s)
            finally:
                if proc.poll() is None:  # interrupted (Ctrl-C): take the run down with us
                    self._stop(proc, 0)
                _killpg(proc.pid, signal.SIGKILL)  # leftovers in the group
        seconds = time.monotonic() - start
        code = proc.returncode
        reason = f"timed out after {spec.timeout_s:g}s" if timed_out else _exit_reason(code)
        return RunResult(exit_code=code, seconds=seconds, timed_out=timed_out, log_path=log_path, reason=reason)

    @staticmethod
    def _stop(proc: subprocess.Popen, grace_s: float) -> None:
        _killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait(proc: subprocess.Popen, deadline: float) -> bool:
    """Whether `proc` exited before `deadline`. A pidfd wakes us the moment it does (Popen.wait with a timeout polls
    with sleeps of up to 50 ms, each added to the run's time); the short polls let Ctrl-C and a cancel in."""
    exited = select.poll()
    pidfd = os.pidfd_open(proc.pid)
    exited.register(pidfd, select.POLLIN)
    try:
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            exited.poll(max(1, min(250, int((deadline - time.monotonic()) * 1000))))
        return True
    finally:
        os.close(pidfd)


def _exit_reason(code: int | None) -> str:
    if code is None or code == 0:
        return ""
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code}"
