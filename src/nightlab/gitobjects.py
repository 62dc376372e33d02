"""Git objects and refs read and written by nightlab itself, as git writes them: a trial's commit, its amended
message, its ref and the files the audit reads cost no git process (each costs milliseconds; they were six of a
trial's ten).

Crash safety is git's own. An object goes to a temporary file beside its final name (`tmp_obj_*`, a name git's
fsck and gc know) and is renamed into place: it exists whole or not at all. A ref is written to `<ref>.lock`,
created exclusively as git does (a second writer fails instead of racing), its reflog line appended, and the lock
renamed over the ref. Objects are written before any ref names them, so a kill leaves at worst unreferenced
objects (as a killed `git commit` does) or a stale lock (which repair.mend clears at the next start). Named kill
points (crashpoint) stand where git's own steps stood, for the chaos suite.

What this module does not do it leaves to git: an object only in a pack (or an alternate) is read by one
`git cat-file`; a repository where a commit needs more than writing objects (attributes or filters that change
content, another hash, a shared repository, environment overrides) makes `Repo.fast` False, and the caller runs
the git commands it always ran.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from nightlab.errors import NightlabError

TREE, BLOB, EXEC, LINK = b"40000", b"100644", b"100755", b"120000"
# The environment that redirects git somewhere this module would not look, or changes what a commit writes.
REDIRECTS = ("GIT_DIR", "GIT_COMMON_DIR", "GIT_WORK_TREE", "GIT_OBJECT_DIRECTORY", "GIT_INDEX_FILE",
             "GIT_NAMESPACE", "GIT_REFLOG_ACTION")
PER_WORKTREE = ("HEAD", "refs/worktree/", "refs/bisect/", "refs/rewritten/")
CACHED = 512  # objects kept read (immutable: a cache never goes stale)
BIG = 1 << 20  # larger objects are not cached
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git knows it without storing it


class Fallback(Exception):
    """Something left to git."""


@dataclass(frozen=True)
class Entry:
    mode: bytes
    name: bytes
    sha: str


def parse_tree(data: bytes) -> list[Entry]:
    entries, i = [], 0
    while i < len(data):
        space, nul = data.index(b" ", i), data.index(b"\0", i)
        entries.append(Entry(data[i:space], data[space + 1:nul], data[nul + 1:nul + 21].hex()))
        i = nul + 21
    return entries


def format_tree(entries: list[Entry]) -> bytes:
    """git's order: names compared as bytes, a tree's as if it ended in '/'."""
    ordered = sorted(entries, key=lambda e: e.name + b"/" if e.mode == TREE else e.name)
    return b"".join(e.mode + b" " + e.name + b"\0" + bytes.fromhex(e.sha) for e in ordered)


class Objects:
    """A repository's object database: loose objects read and written here, packed ones read through git."""

    def __init__(self, common: Path) -> None:
        self.dir = common / "objects"
        self.common = common
        self._cache: dict[str, tuple[bytes, bytes]] = {}
        self._lock = threading.Lock()  # an agent's thread commits while the main one records

    def read(self, sha: str) -> tuple[bytes, bytes]:
        """(kind, content) of object `sha`."""
        if (got := self._cache.get(sha)) is not None:
            return got
        if sha == EMPTY_TREE:
            return b"tree", b""
        try:
            raw = zlib.decompress((self.dir / sha[:2] / sha[2:]).read_bytes())
        except FileNotFoundError:
            got = self._from_git(sha)
        else:
            header, _, data = raw.partition(b"\0")
            got = (header.split(b" ", 1)[0], data)
        if len(got[1]) <= BIG:
            with self._lock:
                if len(self._cache) >= CACHED:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[sha] = got
        return got

    def _from_git(self, sha: str) -> tuple[bytes, bytes]:
        """An object in a pack or an alternate: git reads it."""
        proc = subprocess.run(["git", f"--git-dir={self.common}", "cat-file", "--batch"], input=sha.encode() + b"\n",
                              capture_output=True)
        header, _, rest = proc.stdout.partition(b"\n")
        words = header.split()
        if proc.returncode != 0 or len(words) != 3:
            raise NightlabError(f"git cat-file failed in {self.common}: object {sha} is missing")
        return words[1], rest[:int(words[2])]

    def write(self, kind: bytes, data: bytes) -> str:
        """Store an object (as git: a temporary file renamed into place); its name."""
        raw = kind + b" " + str(len(data)).encode() + b"\0" + data
        sha = hashlib.sha1(raw).hexdigest()
        final = self.dir / sha[:2] / sha[2:]
        if final.exists():
            os.utime(final)  # git freshens an object it would have written, so a prune keeps it
            return sha
        final.parent.mkdir(exist_ok=True)
        tmp = final.parent / f"tmp_obj_{secrets.token_hex(8)}"  # unique across threads and processes
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            os.write(fd, zlib.compress(raw, 1))  # core.looseCompression's default
        finally:
            os.close(fd)
        os.replace(tmp, final)
        return sha

    def tree(self, sha: str) -> list[Entry]:
        kind, data = self.read(sha)
        if kind != b"tree":
            raise NightlabError(f"object {sha} is a {kind.decode()}, not a tree")
        return parse_tree(data)

    def commit_tree(self, commit: str) -> str:
        """The root tree of `commit`."""
        kind, data = self.read(commit)
        if kind != b"commit" or not data.startswith(b"tree "):
            raise NightlabError(f"object {commit} is not a commit")
        return data[5:45].decode()

    def parents(self, commit: str) -> list[str]:
        lines = self.read(commit)[1].split(b"\n\n", 1)[0].split(b"\n")
        return [line[7:].decode() for line in lines if line.startswith(b"parent ")]

    def lookup(self, tree: str, path: str) -> Entry | None:
        """The entry at `path` (slash-separated) under `tree`."""
        *dirs, name = path.encode().split(b"/")
        for part in dirs:
            sub = next((e for e in self.tree(tree) if e.name == part and e.mode == TREE), None)
            if sub is None:
                return None
            tree = sub.sha
        return next((e for e in self.tree(tree) if e.name == name), None)

    def with_files(self, tree: str, changes: dict[bytes, Entry | None]) -> str:
        """`tree` with the entries at the given paths replaced (None: removed); the new tree's name. A tree left
        empty is removed, as git never records one."""
        entries = {e.name: e for e in self.tree(tree)}
        below: dict[bytes, dict[bytes, Entry | None]] = {}
        for path, entry in changes.items():
            head, _, rest = path.partition(b"/")
            if rest:
                below.setdefault(head, {})[rest] = entry
            elif entry is None:
                entries.pop(head, None)
            else:
                entries[head] = entry
        for name, sub in below.items():
            old = entries.get(name)
            if old is not None and old.mode != TREE:
                raise Fallback(f"{name!r} is a file in the tree")
            new = self.with_files(old.sha if old else EMPTY_TREE, sub)
            if new == EMPTY_TREE:
                entries.pop(name, None)
            else:
                entries[name] = Entry(TREE, name, new)
        return self.write(b"tree", format_tree(list(entries.values())))


