"""Refs read and moved by nightlab itself, as git's files backend does (see gitobjects.py for why and how safely).

A ref is a file (`refs/heads/nightlab/<tag>`) or a line of `packed-refs`, the file winning; HEAD and a few
others belong to each worktree. An update locks every ref it touches (`<ref>.lock`, created exclusively: a second
writer fails, as with git), checks the old value under the lock, appends the reflog lines git would, then renames
the lock over the ref. Moving HEAD while it names a branch moves the branch, and both reflogs get the line.
Lock removal by repair.mend (stale locks of a killed nightlab) is kept out of that window by a shared hold on
the worktrees' mutex, which mend takes exclusively.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nightlab import crashpoint
from nightlab.errors import NightlabError
from nightlab.repair import ADMIN_MUTEX

NULL = "0" * 40
CLOSED, GONE = -1, -2  # a lock's state once its file descriptor is closed
PER_WORKTREE = ("HEAD", "refs/worktree/", "refs/bisect/", "refs/rewritten/")
LOGGED = ("HEAD", "refs/heads/", "refs/remotes/", "refs/notes/")  # reflogs git makes by default


class Refs:
    def __init__(self, gitdir: Path, common: Path, log_updates: str = "true") -> None:
        self.gitdir, self.common = gitdir, common
        self.log_updates = log_updates.lower()  # core.logAllRefUpdates: true, false or always
        self._packed: tuple[tuple[int, int, int], dict[str, str]] | None = None

    def path(self, name: str) -> Path:
        return (self.gitdir if name.startswith(PER_WORKTREE) else self.common) / name

    def read(self, name: str) -> str | None:
        """What the ref holds: an object name, or `ref: <name>` for a symbolic one; None when there is none."""
        try:
            return self.path(name).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None if name.startswith(PER_WORKTREE) else self.packed().get(name)
        except IsADirectoryError:
            return None

    def resolve(self, name: str) -> str | None:
        """The object a ref names, through symbolic refs."""
        for _ in range(5):
            value = self.read(name)
            if value is None or not value.startswith("ref:"):
                return value
            name = value[4:].strip()
        raise NightlabError(f"ref {name} is a symbolic ref loop")

    def packed(self) -> dict[str, str]:
        """`packed-refs`, read again only when it changed."""
        path = self.common / "packed-refs"
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._packed is None or self._packed[0] != stamp:
            refs = {}
            for line in path.read_text().splitlines():
                if line and line[0] not in "#^":
                    sha, _, name = line.partition(" ")
                    refs[name] = sha
            self._packed = (stamp, refs)
        return self._packed[1]

    def update(self, name: str, new: str, old: str | None, who: bytes, message: str, point: str) -> None:
        """Point `name` (through HEAD: its branch) at `new`; `old`: what it must hold now (None: anything).
        `who`: the committer and date for the reflog; `point`: the kill point while the locks are held."""
        target = self.read(name) if name == "HEAD" else None
        names = [name, target[4:].strip()] if target and target.startswith("ref:") else [name]
        with self._mutex(), self._locked(names) as locks:
            now = self.resolve(names[-1])
            if old is not None and (now or NULL) != old:
                raise NightlabError(f"cannot lock ref {names[-1]}: it is at {now or 'nothing'}, not {old}")
            crashpoint.reached(point)  # git's reference-transaction "prepared": every lock held
            said = _one_line(message).encode(errors="surrogateescape")
            line = f"{now or NULL} {new} ".encode() + who + (b"\t" + said if said else b"") + b"\n"
            for ref in names:
                self._log(ref, line)
            lock, fd = locks[-1]
            os.write(fd, f"{new}\n".encode())
            os.close(fd)
            locks[-1] = (lock, CLOSED)
            os.replace(lock, self.path(names[-1]))
            locks[-1] = (lock, GONE)

    @contextmanager
    def _mutex(self) -> Iterator[None]:
        with open(self.common / ADMIN_MUTEX, "a") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            yield

    @contextmanager
    def _locked(self, names: list[str]) -> Iterator[list[tuple[Path, int]]]:
        """`<ref>.lock` for each ref, made exclusively; those still there at the end are removed."""
        locks: list[tuple[Path, int]] = []
        try:
            for ref in names:
                lock = self.path(ref).with_name(self.path(ref).name + ".lock")
                lock.parent.mkdir(parents=True, exist_ok=True)
                try:
                    locks.append((lock, os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
                except FileExistsError:
                    raise NightlabError(f"cannot lock ref {ref}: {lock} exists (another git process holds it, "
                                        "or one was killed: remove it if none runs)") from None
            yield locks
        finally:
            for lock, fd in locks:
                if fd >= 0:
                    os.close(fd)
                if fd != GONE:  # never one renamed away: another writer may hold that name now
                    lock.unlink(missing_ok=True)

    def _log(self, ref: str, line: bytes) -> None:
        log = (self.gitdir if ref.startswith(PER_WORKTREE) else self.common) / "logs" / ref
        wanted = self.log_updates == "always" or (self.log_updates == "true" and ref.startswith(LOGGED))
        if not wanted and not log.exists():
            return
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _one_line(message: str) -> str:
    """A reflog message as git keeps it: whitespace runs as one space, none at the ends."""
    out, space = [], True
    for c in message:
        if c in " \t\n\r":
            if not space:
                out.append(" ")
            space = True
        else:
            out.append(c)
            space = False
    return "".join(out).rstrip(" ")
