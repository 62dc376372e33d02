"""A trial's worktree checked and put back by nightlab itself: what `git status` reports (changed, deleted and new
files) and what `git reset --hard <commit>` does (files, index, HEAD and its branch, reflogs), without their
processes, where the answer is surely git's; else Fallback, and the caller runs git as before. They were three of
a trial's git processes, after every agent's turn and every record. Left out: ORIG_HEAD, git's note of where a
reset came from for a user to go back (nothing reads it in nightlab's worktrees; its lock and rename cost as much
as the index's), and the rewrite of a file that already holds the blob the reset wants (its stat is taken again).

Both read what git itself reads: the index (gitindex.py, racily clean entries compared by content), HEAD and the
trees (gitobjects.py), and a scan of the worktree. What they do not decide is which untracked files are ignored
(.gitignore at any depth, info/exclude, core.excludesFile): git's own `git status --ignored=matching` says it once
(`learn`), and its answer is trusted only while every ignore file holds the same bytes (a path's ignored-ness
depends on nothing else: its name, its directories' and the rules). A path git has not classified under those
rules sends the question back to git. Removing untracked files is `git clean`'s, run only when some are there
(a run under the `process` sandbox may leave some); the linked data and the ignored files never make it run.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from nightlab import gitindex
from nightlab.gitcmd import git
from nightlab.gitcommit import Repo, ident_date
from nightlab.gitobjects import BLOB, EXEC, LINK, TREE, Fallback, Objects

# A worktree in the middle of something git would end or refuse on a reset (a cherry-pick left open, a merge).
BUSY = ("MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "MERGE_MSG", "MERGE_MODE", "AUTO_MERGE", "SQUASH_MSG",
        "MERGE_RR", "BISECT_LOG", "sequencer", "rebase-merge", "rebase-apply")
# Settings under which git's index or its idea of a file differs from what this module reads and writes.
SLOW_CONFIG = {"core.ignorecase": ("", "false"), "core.splitindex": ("", "false"), "core.fsmonitor": ("", "false"),
               "core.untrackedcache": ("", "false", "keep"), "core.sparsecheckout": ("", "false"),
               "index.version": ("", "2"), "index.sparse": ("", "false"), "feature.manyfiles": ("", "false"),
               "core.worktree": ("",), "core.bare": ("", "false")}
MODES = {BLOB: 0o100644, EXEC: 0o100755, LINK: 0o120000}
FLAT_CACHED = 8  # flattened trees kept (the best's and a trial's are the ones asked again)


@dataclass
class Scan:
    """The worktree as lstat sees it, but for the directories known to be ignored."""
    files: dict[str, os.stat_result] = field(default_factory=dict)  # every non-directory, by repository path
    dirs: set[str] = field(default_factory=set)
    empty: list[str] = field(default_factory=list)  # directories with nothing in them
    rules: list[tuple[str, bytes]] = field(default_factory=list)  # each .gitignore and its bytes


@dataclass
class Learned:
    """What git said of the untracked paths, under the ignore rules whose bytes make `rules`."""
    rules: bytes
    ignored: set[str]
    ignored_dirs: set[str]
    untracked: set[str]

    def ignored_path(self, path: str) -> bool | None:
        """Whether git ignores `path`, a file (None: git was not asked)."""
        parts = path.split("/")
        if any("/".join(parts[:i]) in self.ignored_dirs for i in range(1, len(parts))) or path in self.ignored:
            return True  # nothing under an ignored directory can be taken back in
        return False if path in self.untracked else None


def blob_name(path: Path, st: os.stat_result) -> str:
    data = os.fsencode(os.readlink(path)) if stat.S_ISLNK(st.st_mode) else path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def covered(path: str, linked: list[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in linked)


class Checkout:
    """One worktree's status and reset, computed here (`fast`), else by git."""

    def __init__(self, store: Repo) -> None:
        self.store, self.tree, self.gitdir = store, store.tree, store.refs.gitdir
        self.why_slow = store.why_slow or _why_slow(store.config)
        self.learned: Learned | None = None
        self.unlearnable = False  # git's last answer could not be followed (a nested repository)
        self._flat: dict[str, dict[str, tuple[int, str]]] = {}

    # -- status -------------------------------------------------------------------------------------------------
    def status(self, linked: list[str]) -> dict[str, bool]:
        """The paths `git status --porcelain -uall` lists (repository's), linked data left out → whether git tracks
        each; Fallback where git must answer (then `learn`)."""
        if self.why_slow or self.learned is None:  # unlearned: no scan of what may be a large ignored tree
            raise Fallback(self.why_slow or "git has not said what is ignored")
        index = gitindex.read(self.gitdir / "index")
        head = self.store.refs.resolve("HEAD")
        if head is None or len(head) != 40:
            raise Fallback("HEAD names no commit")
        committed = self.flat(self.store.objects.commit_tree(head))
        scan = self.scan(index)
        learned = self._trusted(scan)
        out = {p: True for p in committed.keys() | index.entries.keys()
               if p not in index.entries or committed.get(p) != (index.entries[p].mode, index.entries[p].sha)
               or not self.same(index, p, scan.files.get(p))}
        for path in sorted(scan.files.keys() - index.entries.keys()):
            if covered(path, linked):
                continue
            ignored = learned.ignored_path(path)
            if ignored is None:
                raise Fallback(f"git has not said whether {path} is ignored")
            if not ignored:
                out[path] = False  # as git lists it: untracked, after a staged deletion of the same path
        return out

    def learn(self) -> dict[str, bool]:
        """git's own status (the paths and whether git tracks each); the ignored paths it names are trusted later
        while the ignore rules stay byte for byte the same."""
        out = git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames", "--ignored=matching",
                  cwd=self.tree)
        files: dict[str, bool] = {}
        ignored, untracked = set(), set()
        for entry in filter(None, out.split("\0")):
            code, path = entry[:2], entry[3:]
            if code == "!!":
                ignored.add(path)
            else:
                files[path] = code != "??"
                if code == "??":
                    untracked.add(path)
        self.learned = None
        if not self.why_slow and not any(p.endswith("/") for p in untracked):  # a nested repository: git's to say
            try:
                dirs = {p.rstrip("/") for p in ignored if p.endswith("/")}
                learned = Learned(b"", {p for p in ignored if not p.endswith("/")}, dirs, untracked)
                self.learned = learned
                learned.rules = self.rules(self.scan(gitindex.read(self.gitdir / "index")))
            except Fallback:
                self.learned = None
        self.unlearnable = self.learned is None
        return files

    def _trusted(self, scan: Scan) -> Learned:
        if self.learned is None or self.learned.rules != self.rules(scan):
            raise Fallback("the ignore rules are not known")
        return self.learned

    def same(self, index: gitindex.Index, path: str, st: os.stat_result | None) -> bool:
        """Whether the worktree's file is still the index entry's blob (git's rule: stat, then content)."""
        if st is None:
            return False
        if index.unchanged(path, st):
            return True
        entry = index.entries[path]
        return gitindex.file_mode(st) == entry.mode and blob_name(self.tree / path, st) == entry.sha

    # -- reset --------------------------------------------------------------------------------------------------
    def reset(self, commit: str, sub: str, linked: list[str]) -> bool:
        """`git reset --hard <commit>` (a full object name), then `git clean -fd` under `sub` (the project, '' the
        top) where this module can tell what it removes: whether `git clean` must still run. Fallback where git
        must reset (nothing changed then)."""
        if self.why_slow or len(commit) != 40:
            raise Fallback(self.why_slow or "not a full object name")
        if busy := [name for name in BUSY if (self.gitdir / name).exists()]:
            raise Fallback(f"{busy[0]} exists")
        target = self.flat(self.store.objects.commit_tree(commit))
        if self.learned is None and not self.unlearnable:  # the scan then skips ignored trees (a venv, a dataset)
            self.learn()
        lock = gitindex.Lock(self.gitdir / "index")
        try:
            index = gitindex.read(self.gitdir / "index")
            scan = self.scan(index)
            plan = self.plan(index, target, scan, linked)
            stray = self.strays(index, target, scan, sub, linked)
            lock.commit(self.apply(index, target, scan, plan), "git.reset.indexed")
        finally:
            lock.release()
        if self.store.refs.resolve("HEAD") != commit:  # git writes it even so; a discard's reset here writes nothing
            who = self.store.committer.line(ident_date(time.time()))
            self.store.refs.update("HEAD", commit, None, who, f"reset: moving to {commit}", "git.reset.locked")
        for path in stray or []:
            (self.tree / path).unlink(missing_ok=True)
            _prune(self.tree, path)
        return stray is None

    def plan(self, index: gitindex.Index, target: dict[str, tuple[int, str]], scan: Scan,
             linked: list[str]) -> dict[str, bool]:
        """What the reset changes: path → True to write it from `target`, False to remove it; Fallback where a
        file must become a directory or the other way round (git's to untangle)."""
        plan = {p: False for p in index.entries.keys() - target.keys() if p in scan.files}
        for path, (mode, sha) in target.items():
            entry, st = index.entries.get(path), scan.files.get(path)
            if entry is not None and (entry.mode, entry.sha) == (mode, sha) and self.same(index, path, st):
                continue
            if st is None or gitindex.file_mode(st) != mode or blob_name(self.tree / path, st) != sha:
                plan[path] = True  # else it holds the blob already (a kept trial's edit): its stat is taken
        for path, write in plan.items():
            parts = path.split("/")
            ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
            if path in scan.dirs or covered(path, linked) or (write and any(a in scan.files for a in ancestors)):
                raise Fallback(f"{path} changes between a file and a directory")
        return plan

    def strays(self, index: gitindex.Index, target: dict[str, tuple[int, str]], scan: Scan, sub: str,
               linked: list[str]) -> list[str] | None:
        """The files `git clean -fd` under `sub` would remove once the reset is done: untracked, neither linked nor
        ignored (git is asked about ignored ones once: `learn`); None where git must clean (an empty directory,
        a file git was not asked about, one its `-e <linked>` patterns could keep)."""
        inside = [p for p in scan.files.keys() - index.entries.keys() - target.keys()
                  if (not sub or p.startswith(sub + "/")) and not covered(p, linked)]
        if any(not sub or d.startswith(sub + "/") for d in scan.empty):
            return None
        if not inside:
            return []
        try:
            learned = self._trusted(scan)
        except Fallback:
            self.learn()
            try:
                learned = self._trusted(scan)
            except Fallback:  # git could not be followed (a nested repository): it cleans
                return None
        known = [(p, learned.ignored_path(p)) for p in inside]
        stray = [p for p, ignored in known if ignored is False]
        patterns = [p[len(sub) + 1:] if sub else p for p in linked]  # git's `-e`, as the project names them
        named = {part for p in patterns for part in p.split("/")}  # what they could match
        if any(ignored is None for _, ignored in known) or any(named & set(p.split("/")) for p in stray) \
                or any(c in p for p in patterns for c in "*?[\\!#"):
            return None
        return stray

    def apply(self, index: gitindex.Index, target: dict[str, tuple[int, str]], scan: Scan,
              plan: dict[str, bool]) -> dict[str, gitindex.Entry]:
        """Write and remove the planned files as git's checkout does (a file replaced, not rewritten in place:
        its mode is the one created); the new index's entries."""
        entries = {}
        for path, (mode, sha) in target.items():
            if path not in plan:
                st = scan.files[path]  # the same blob: stat kept, or taken again after a content check
                old = index.entries.get(path)
                kept = old is not None and (old.mode, old.sha) == (mode, sha) and index.unchanged(path, st)
                entries[path] = old if kept and old else gitindex.Entry(mode, sha, gitindex.stat_data(st))
        for path in sorted(plan):
            full = self.tree / path
            if path in scan.files:
                full.unlink()
            if not plan[path]:
                _prune(self.tree, path)
                continue
            mode, sha = target[path]
            kind, data = self.store.objects.read(sha)
            full.parent.mkdir(parents=True, exist_ok=True)
            if mode == 0o120000:
                os.symlink(os.fsdecode(data), full)
            else:
                fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o777 if mode == 0o100755 else 0o666)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            entries[path] = gitindex.Entry(mode, sha, gitindex.stat_data(full.lstat()))
        return entries

    # -- reading ------------------------------------------------------------------------------------------------
    def flat(self, tree: str) -> dict[str, tuple[int, str]]:
        if (got := self._flat.get(tree)) is None:
            if len(self._flat) >= FLAT_CACHED:
                self._flat.pop(next(iter(self._flat)))
            got = self._flat[tree] = flatten(self.store.objects, tree)
        return got

    def scan(self, index: gitindex.Index) -> Scan:
        tracked_dirs = {"/".join(p.split("/")[:i]) for p in index.entries for i in range(1, p.count("/") + 1)}
        return scan(self.tree, self.learned.ignored_dirs - tracked_dirs if self.learned else set())

    def rules(self, found: Scan) -> bytes:
        hidden = self.learned.ignored_dirs if self.learned else set()  # git reads no rule in an ignored directory
        return rules(self.store.objects.common, self.store.config, found, hidden)


def flatten(objects: Objects, tree: str) -> dict[str, tuple[int, str]]:
    """Every file under `tree`: path → (index mode, blob); Fallback for a submodule or an attributes file."""
    out: dict[str, tuple[int, str]] = {}
    stack = [("", tree)]
    while stack:
        prefix, sha = stack.pop()
        for e in objects.tree(sha):
            path = prefix + os.fsdecode(e.name)
            if e.mode == TREE:
                stack.append((path + "/", e.sha))
            elif e.mode not in MODES or e.name == b".gitattributes":
                raise Fallback(f"{path} is a submodule or an attributes file")
            else:
                out[path] = (MODES[e.mode], e.sha)
    return out


def scan(top: Path, skip: set[str]) -> Scan:
    """The worktree at `top`, but for its `.git` and the directories in `skip` (ignored, nothing tracked in them);
    Fallback for a nested repository, an attributes file or a file of another kind (a socket, a fifo)."""
    out, stack = Scan(), [""]
    while stack:
        rel = stack.pop()
        with os.scandir(top / rel if rel else top) as it:
            found = list(it)
        if rel and not found:
            out.empty.append(rel)
        for e in found:
            path = f"{rel}/{e.name}" if rel else e.name
            if e.name == ".git":
                if not rel:
                    continue
                raise Fallback(f"{rel} holds a repository of its own")
            if e.is_dir(follow_symlinks=False):
                out.dirs.add(path)
                if path not in skip:
                    stack.append(path)
                continue
            if e.name == ".gitattributes":  # tracked or not, it may change what git reads and writes
                raise Fallback(f"{path} may change what git checks out")
            st = e.stat(follow_symlinks=False)
            if gitindex.file_mode(st) is None:
                raise Fallback(f"{path} is neither a file nor a link")
            out.files[path] = st
            if e.name == ".gitignore":
                out.rules.append((path, _read(top / path)))
    return out


def rules(common: Path, config: dict[str, str], found: Scan, hidden: set[str]) -> bytes:
    """Every ignore rule's bytes (and where it comes from), to tell whether what git said still holds; `hidden`:
    the ignored directories, whose .gitignore files git never reads."""
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    user = os.path.expanduser(config.get("core.excludesfile") or str(xdg / "git" / "ignore"))
    if not os.path.isabs(user):
        raise Fallback("core.excludesFile is a relative path")
    sources = [("info/exclude", _read(common / "info" / "exclude")), ("core.excludesFile", _read(Path(user)))]
    sources += sorted((p, data) for p, data in found.rules if not any(p.startswith(d + "/") for d in hidden))
    return b"".join(b"%s\0%d\0%s" % (os.fsencode(where), len(data), data) for where, data in sources)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return b""


def _prune(top: Path, path: str) -> None:
    """The directories a removed file leaves empty go with it, as with git."""
    parent = (top / path).parent
    while parent != top:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def _why_slow(config: dict[str, str]) -> str:
    """Why a status or a reset here is left to git ('' when it need not be)."""
    if os.environ.get("GIT_INDEX_VERSION"):
        return "GIT_INDEX_VERSION is set"
    for key, fine in SLOW_CONFIG.items():
        if config.get(key, "").lower() not in fine:
            return f"{key} is set"
    return ""
