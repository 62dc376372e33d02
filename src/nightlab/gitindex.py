"""A worktree's index (`<gitdir>/index`) read and written by nightlab itself, in git's version 2 format, so a reset
or a status of a trial's worktree costs no git process and every git command after it (a cherry-pick, `git diff
HEAD`, the user's `git status`) finds the index git's own reset would have left.

An entry holds the file's stat data as lstat gave it when its content was known to be the blob's. A file whose
stat still matches is unchanged, unless it is racily clean: file times advance in coarse ticks, so a rewrite of
the same size in the same tick as the index was written keeps every stat field. As git does, an entry whose mtime
is not older than the index file itself is trusted only after its content is compared.

Writing is git's: `index.lock` created exclusively (a second writer fails instead of racing), the whole new index
with its SHA-1 trailer written there, then renamed over the index. A kill leaves at worst a stale `index.lock`,
which repair.mend clears at the next start, as it clears those of killed git processes. An index this module does
not fully understand (another version, a split index, a sparse checkout, conflict stages, flags) is git's to
handle: reading it raises Fallback.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from nightlab import crashpoint
from nightlab.errors import NightlabError
from nightlab.gitobjects import Fallback

HEADER = struct.Struct(">4sII")
FIELDS = struct.Struct(">10I20sH")  # ctime s/ns, mtime s/ns, dev, ino, mode, uid, gid, size; sha; flags
MODES = (0o100644, 0o100755, 0o120000)  # a file, an executable, a symlink
U32 = 0xFFFFFFFF


@dataclass
class Entry:
    mode: int  # 0o100644, 0o100755 or 0o120000
    sha: str
    stat: tuple[int, ...]  # as stored: ctime s, ns, mtime s, ns, dev, ino, uid, gid, size (32 bits each)

    @property
    def mtime_ns(self) -> int:
        return self.stat[2] * 1_000_000_000 + self.stat[3]


def stat_data(st: os.stat_result) -> tuple[int, ...]:
    """An lstat as an index entry stores it (git truncates every field to 32 bits)."""
    c, m = divmod(st.st_ctime_ns, 1_000_000_000), divmod(st.st_mtime_ns, 1_000_000_000)
    return tuple(v & U32 for v in (*c, *m, st.st_dev, st.st_ino, st.st_uid, st.st_gid, st.st_size))


def file_mode(st: os.stat_result) -> int | None:
    """The index mode of a worktree file (None: not something an index entry describes)."""
    if stat.S_ISLNK(st.st_mode):
        return 0o120000
    if stat.S_ISREG(st.st_mode):
        return 0o100755 if st.st_mode & stat.S_IXUSR else 0o100644
    return None


@dataclass
class Index:
    entries: dict[str, Entry]  # by path (the repository's, slash-separated, as os.fsdecode gives it)
    mtime_ns: int  # of the index file as read: entries not older are racily clean

    def unchanged(self, path: str, st: os.stat_result) -> bool:
        """Whether the stat alone proves the file is still the entry's blob (False: compare the content)."""
        e = self.entries[path]
        return e.stat == stat_data(st) and file_mode(st) == e.mode and e.mtime_ns < self.mtime_ns


def read(path: Path) -> Index:
    """The index at `path` (a missing one is empty); Fallback where git must read it."""
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return Index({}, 0)
    if len(data) < HEADER.size + 20 or hashlib.sha1(data[:-20]).digest() != data[-20:]:
        raise Fallback("the index is not whole")
    sig, version, count = HEADER.unpack_from(data)
    if sig != b"DIRC" or version != 2:
        raise Fallback(f"index version {version}")
    entries, i = {}, HEADER.size
    for _ in range(count):
        *raw, sha, flags = FIELDS.unpack_from(data, i)
        end = data.index(b"\0", i + FIELDS.size)
        name = data[i + FIELDS.size:end]
        if flags & 0xF000 or raw[6] not in MODES:  # assume-valid, extended, a conflict stage; a gitlink
            raise Fallback(f"index entry {name!r} is more than a plain file")
        entries[os.fsdecode(name)] = Entry(raw[6], sha.hex(), (*raw[:6], *raw[7:]))
        i += (FIELDS.size + len(name) + 8) & ~7  # 1 to 8 NULs pad an entry to a multiple of 8
    while i < len(data) - 20:  # extensions: optional ones (a cache git rebuilds) may go, required ones may not
        sig, size = data[i:i + 4], struct.unpack_from(">I", data, i + 4)[0]
        if not sig[:1].isupper():
            raise Fallback(f"index extension {sig!r}")
        i += 8 + size
    return Index(entries, st.st_mtime_ns)


def encode(entries: dict[str, Entry]) -> bytes:
    out = [HEADER.pack(b"DIRC", 2, len(entries))]
    # git's order: bytewise (stage 0 only)
    for name, e in sorted(((os.fsencode(p), e) for p, e in entries.items()), key=lambda t: t[0]):
        s = e.stat
        fields = FIELDS.pack(*s[:6], e.mode, *s[6:], bytes.fromhex(e.sha), min(len(name), 0xFFF))
        entry = fields + name
        out.append(entry + b"\0" * (8 - len(entry) % 8))
    body = b"".join(out)
    return body + hashlib.sha1(body).digest()


class Lock:
    """`index.lock`, taken as git takes it: before the worktree changes, so no git writes the index meanwhile."""

    def __init__(self, index: Path) -> None:
        self.index, self.path = index, index.with_name(index.name + ".lock")
        self.placed = False
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise NightlabError(f"cannot lock the index: {self.path} exists (another git process holds it, "
                                "or one was killed: remove it if none runs)") from None

    def commit(self, entries: dict[str, Entry], point: str) -> None:
        """Write the new index and rename it into place; `point`: the kill point with the lock written."""
        os.write(self.fd, encode(entries))
        os.close(self.fd)
        self.fd = -1
        crashpoint.reached(point)
        os.replace(self.path, self.index)
        self.placed = True

    def release(self) -> None:
        """Drop the lock unless committed (from `finally`: an error leaves the index as it was)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.placed:  # never one renamed away: another writer may hold that name now
            self.path.unlink(missing_ok=True)
