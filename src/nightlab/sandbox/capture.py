"""Output of a sandboxed run: a size-capped log that keeps its tail, run-directory size, clean-up.

The run's output goes through a pipe the harness drains, so the log on disk never grows past its cap
however much the run prints; the summary block (the metric lines) is at the end, so the tail is kept.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 16


class LogCapture(threading.Thread):
    """Copy a pipe to `path`: the first half of `max_bytes`, then only the latest half (written at close)."""

    def __init__(self, fd: int, path: Path, max_bytes: int) -> None:
        super().__init__(daemon=True, name="nightlab-log")
        self.fd, self.path, self.max_bytes = fd, path, max_bytes
        self.dropped = 0

    def run(self) -> None:
        head_room = self.max_bytes // 2 if self.max_bytes else -1
        tail = bytearray()
        with self.path.open("wb") as out, os.fdopen(self.fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(CHUNK):
                if head_room < 0:
                    out.write(chunk)
                    continue
                if head_room:
                    part = chunk[:head_room]
                    out.write(part)
                    head_room -= len(part)
                    chunk = chunk[len(part):]
                tail += chunk
                keep = self.max_bytes - self.max_bytes // 2
                if len(tail) > keep:
                    self.dropped += len(tail) - keep
                    del tail[:len(tail) - keep]
            if self.dropped:
                out.write(f"\n[nightlab: {self.dropped} bytes of output dropped here: the log is capped at "
                          f"{self.max_bytes / 2**20:g} MB; its start and its end are kept]\n".encode())
            out.write(tail)


def dir_size(path: Path) -> int:
    """Bytes used under `path`, not following symlinks (a link to a big file costs nothing)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class DirWatch(threading.Thread):
    """Calls `on_exceeded` once when `path` grows past `max_bytes` (checked every `interval` s)."""

    def __init__(self, path: Path, max_bytes: int, on_exceeded: Callable[[], None], interval: float = 0.1) -> None:
        super().__init__(daemon=True, name="nightlab-dirwatch")
        self.path, self.max_bytes, self.on_exceeded, self.interval = path, max_bytes, on_exceeded, interval
        self.exceeded = False
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            if dir_size(self.path) > self.max_bytes:
                self.exceeded = True
                self.on_exceeded()
                return

    def stop(self) -> None:
        self._halt.set()


def sanitize(run_dir: Path, reserved: tuple[str, ...] = ()) -> list[str]:
    """Remove what the run left in its directory that the harness must never follow or open.

    A symlink (`metrics.json -> ~/.bashrc`) would make the harness read or write outside the run
    directory; a FIFO or socket would make it block; a directory named like a file the harness
    writes (`reserved`) would make that write fail. Returns what was removed, relative to run_dir.
    """
    removed = []
    for name in reserved:
        reserved_path = run_dir / name
        if reserved_path.is_dir() and not reserved_path.is_symlink():
            shutil.rmtree(reserved_path, ignore_errors=True)
            removed.append(name)
    for root, dirs, files in os.walk(run_dir):
        for name in files + dirs:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, run_dir)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) or (stat.S_ISDIR(mode) and not stat.S_ISLNK(mode)):
                continue
            try:
                os.unlink(path)
                removed.append(rel)
            except OSError:
                pass
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    return sorted(removed)
