"""Helpers for tests about processes on this machine: finding them by command line or by ancestry, and waiting
for a state (a process gone, a condition true) with a generous timeout as a safety net, never a fixed sleep.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def host_pids_with(marker: str) -> list[int]:
    """Host processes whose command line holds `marker` (a leftover of the sandbox, if any)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def procs() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line) of every process now."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            out[int(d.name)] = (ppid, (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            pass  # gone meanwhile
    return out


def descendants(pid: int, table: dict[int, tuple[int, str]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, (pp, _) in table.items() if pp == parent]
        found += kids
        todo += kids
    return found


def running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def own_pid(host_pid: int) -> int:
    """The pid `host_pid` has in its own (innermost) pid namespace: what its own getpid() says."""
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"/proc/{host_pid}/status has no NSpid line")


def holders(prefix: str, cwd_under: Path | None = None) -> list[int]:
    """Live processes holding files open under `prefix` (and working in `cwd_under`, if given)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or (cwd_under and not Path(os.readlink(proc / "cwd")).is_relative_to(cwd_under)):
                continue
            if any(os.readlink(fd).startswith(prefix) for fd in (proc / "fd").iterdir()):
                found.append(int(proc.name))
        except OSError:
            pass  # gone meanwhile
    return [p for p in found if running(p)]


def wait_for(check: Callable[[], T], timeout: float = 20, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Watch:
    """Processes held by pidfd from the moment they are found, so that a pid the kernel hands out again later
    is never mistaken for one of them; `survivors()` waits on their exits, as the kernel reports them."""

    def __init__(self, pids: list[int]) -> None:
        self.fds: dict[int, int] = {}
        for pid in pids:
            try:
                self.fds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                pass  # already gone

    def survivors(self, timeout: float) -> list[int]:
        """The watched processes still running after up to `timeout` seconds (a pidfd is readable once its
        process has exited, reaped or not)."""
        waiting = dict(self.fds)
        deadline = time.monotonic() + timeout
        while waiting and (left := deadline - time.monotonic()) > 0:
            poll = select.poll()
            for fd in waiting.values():
                poll.register(fd, select.POLLIN)
            for fd, _ in poll.poll(int(left * 1000) + 1):
                waiting = {p: f for p, f in waiting.items() if f != fd}
        return sorted(waiting)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
