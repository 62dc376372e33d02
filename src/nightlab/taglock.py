"""One process per tag: the lock every command that writes a tag's state takes (run, verify, study sessions)."""

from __future__ import annotations

import fcntl
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nightlab.errors import UsageError


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a shutdown, a scheduler) stops as cleanly as Ctrl-C


@contextmanager
def tag_lock(state: Path) -> Iterator[None]:
    """One `nightlab run` per tag; the OS drops the lock when the process dies, even by kill -9."""
    signal.signal(signal.SIGTERM, _interrupt)
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another `nightlab run` is using tag {state.name!r}") from None
        yield
