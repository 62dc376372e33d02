"""The git side of a run: branch, worktree, trial commits and refs, checksums (the edit check: edits.py; the
commits and refs written without git processes: gitcommit.py)."""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nightlab import crashpoint, edits, gitcommit, gitdiff, gitworktree, repair
from nightlab.config import CONFIG_NAME, same_but_endpoint
from nightlab.errors import NightlabError, UsageError
from nightlab.gitcmd import NO_HOOKS, git
from nightlab.gitobjects import Fallback

__all__ = ["NO_HOOKS", "Workspace", "git", "identity_env"]

log = logging.getLogger(__name__)


def toplevel(path: Path) -> Path:
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UsageError(f"{path} is not inside a git repository (run `git init` and commit your project first)")
    return Path(proc.stdout.strip()).resolve()


def identity_env(cwd: Path) -> dict[str, str]:
    """nightlab's own identity for the parts git has no configured value for."""
    return gitcommit.identity_overrides(gitcommit.settings(cwd), os.environ)


def sha256(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode() + b"\0" + sha256(p).encode())
        return h.hexdigest()
    if not path.exists():
        return "missing"
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checksums(base: Path, paths: list[str]) -> dict[str, str]:
    return {p: sha256(base / p) for p in paths}


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [p for p in before if before[p] != after.get(p)]


def ignore_state_dir(root: Path) -> None:
    """Hide `.nightlab/` from git through info/exclude: editing .gitignore would dirty the user's tree."""
    repo = toplevel(root)
    sub = root.resolve().relative_to(repo)
    exclude = Path(git("rev-parse", "--git-path", "info/exclude", cwd=repo))
    exclude = exclude if exclude.is_absolute() else repo / exclude
    pattern = f"/{(sub / '.nightlab').as_posix()}/" if str(sub) != "." else "/.nightlab/"
    text = exclude.read_text() if exclude.exists() else ""
    if pattern not in text.splitlines():
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text(text + ("\n" if text and not text.endswith("\n") else "") + pattern + "\n")


def require_committed(repo: Path, root: Path, sub: Path, editable: list[str]) -> None:
    """A tag starts from what the user committed: refuse uncommitted changes (but for a nightlab.toml that only
    changes the agent's endpoint or model) and editable files git does not hold."""
    if not git("rev-parse", "--verify", "--quiet", "HEAD", cwd=repo, check=False):
        raise UsageError("the repository has no commits yet: commit your project first")
    config = (sub / CONFIG_NAME).as_posix()
    changed = git("diff", "--name-only", "HEAD", cwd=repo).splitlines()
    dirty = [f for f in changed if f != config or not _endpoint_only(repo, config)]
    if dirty:
        files = ", ".join(dirty[:5])
        raise UsageError(f"the working tree has uncommitted changes ({files}); commit or stash them first")
    for f in editable:
        if not git("ls-files", "--", f, cwd=root, check=False):  # fails for a path outside the repo
            raise UsageError(f"editable file {f} is not committed in the repository")


@contextmanager
def worktree_admin(repo: Path) -> Iterator[None]:
    """One process at a time adds, prunes and mends the repository's worktrees (sessions side by side, `nightlab
    study --parallel`): git names a new worktree's admin directory after its folder (`worktree` for every tag),
    so two `worktree add`s race for it, and a prune or a mend could take another's half-made worktree for one a
    kill left. Not reentrant; the OS drops it when the process dies (the file stays: not a git lock, no `.lock`)."""
    with open(repair.common_dir(repo) / repair.ADMIN_MUTEX, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def attach(repo: Path, tree: Path, ref: str, *flags: str) -> None:
    """Workspace._attach, under the worktrees' mutex."""
    if (tree / ".git").exists():  # links both ways hold absolute paths: mend them if the project moved
        git("worktree", "repair", str(tree), cwd=repo, check=False)
        if git("rev-parse", "--verify", "--quiet", "HEAD", cwd=tree, check=False):
            return
        log.warning("worktree %s was unusable (a kill while git made it?): making it again", tree)
    if repair.made_by_git(tree):
        repair.discard(repo, tree)
    git("worktree", "prune", cwd=repo)
    git("-c", NO_HOOKS, "worktree", "add", "--quiet", *flags, str(tree), ref, cwd=repo)


def _endpoint_only(repo: Path, path: str) -> bool:
    """Whether the config at `path` differs from its committed self only in the agent's endpoint or model."""
    if not (repo / path).is_file():
        return False
    committed = git("show", f"HEAD:{path}", cwd=repo, check=False)
    return same_but_endpoint(committed, (repo / path).read_text(errors="replace"))


@dataclass
class Workspace:
    """A worktree of branch `nightlab/<tag>` under `.nightlab/<tag>/worktree` (the user's checkout is never touched)."""

    root: Path  # the project directory (holds nightlab.toml)
    tag: str
    editable: list[str]
    scratchpad: str

    slot: int | str | None = None  # None: the branch's worktree; else a detached one (parallel trials, verify)

    def __post_init__(self) -> None:
        self.repo = toplevel(self.root)
        self.sub = self.root.resolve().relative_to(self.repo)
        state = self.root / ".nightlab" / self.tag
        self.tree = state / "worktree" if self.slot is None else state / "trials" / str(self.slot)
        self.dir = self.tree / self.sub  # the project directory inside the worktree
        self.branch = f"nightlab/{self.tag}"
        self._repo: gitcommit.Repo | None = None  # made once the worktree exists
        self._checkout: gitworktree.Checkout | None = None
        # What this object last made the worktree, so a trial does not pay a git process to learn it again:
        # `_head` is HEAD after nightlab's last reset; `_clean` the commit the worktree was last reset to, until it
        # is lent (to the agent, a run) or changed; `_holds` the commit last made in it (HEAD stays behind). A new
        # process knows none of them: it reads HEAD.
        self._head: str | None = None
        self._clean: str | None = None
        self._holds: str | None = None

    @property
    def store(self) -> gitcommit.Repo:
        """The worktree's commits and refs, written in this process where git's own would be the same."""
        if self._repo is None:
            self._repo = gitcommit.Repo(self.tree, self.repo)
        return self._repo

    @property
    def checkout(self) -> gitworktree.Checkout:
        """The worktree's status and reset, computed in this process where git's own would be the same."""
        if self._checkout is None or self._checkout.store is not self.store:
            self._checkout = gitworktree.Checkout(self.store)
        return self._checkout

    def linked_paths(self) -> list[str]:
        """The linked data's paths in the repository (not edits; a reset keeps them)."""
        return [(self.sub / p).as_posix() for p in getattr(self, "linked", [])]

    @property
    def env(self) -> dict[str, str]:
        return self.store.env

    def _git(self, *args: str, check: bool = True) -> str:
        return git(*args, cwd=self.dir, check=check, env=self.env)

    # -- setup -------------------------------------------------------------------------------
    def open(self, fresh: bool, best: str = "") -> None:
        """Create the branch and worktree (fresh) or reattach to them (resume; a deleted branch is made again at
        `best`, the ledger's best commit, which its trial ref keeps reachable). What a killed nightlab left
        (stale locks, half-made worktrees, a half-made start of this tag) is mended first."""
        ignore_state_dir(self.root)
        with worktree_admin(self.repo):
            repair.mend(self.repo)
        exists = bool(git("branch", "--list", self.branch, cwd=self.repo))
        if fresh:
            _new_branch(self, exists)
        elif not exists:
            _branch_again(self, best)
        try:
            self._attach(self.tree, self.branch)
        except BaseException:
            if fresh:  # a half-made fresh tag would be refused ("branch already exists")
                self._undo_start()
            raise
        crashpoint.reached("start.worktree")

    @property
    def creating(self) -> Path:
        """Present from the branch's creation until the tag's ledger holds it: a start that may be half done."""
        return self.root / ".nightlab" / self.tag / "creating"

    def started(self) -> None:
        """The ledger holds the tag now: a kill from here on is resumed, not undone."""
        self.creating.unlink(missing_ok=True)

    def _undo_start(self) -> None:
        with worktree_admin(self.repo):
            if repair.made_by_git(self.tree):
                repair.discard(self.repo, self.tree)
        git("branch", "-D", self.branch, cwd=self.repo, check=False)

    def _attach(self, tree: Path, ref: str, *flags: str) -> None:
        """A usable worktree at `tree`: the one there (links mended if the project moved), else made anew with
        `git worktree add <flags> <tree> <ref>`; one a kill left half-made is removed first."""
        self._repo = self._head = self._holds = None  # the worktree's git directory may be another after this
        with worktree_admin(self.repo):
            attach(self.repo, tree, ref, *flags)

    def spare(self, slot: int | str) -> Workspace:
        """A detached worktree of its own for trials in flight beside others (the branch moves only on a keep)."""
        other = Workspace(self.root, self.tag, self.editable, self.scratchpad, slot)
        other._attach(other.tree, self.head(), "--detach")
        other.link_data(getattr(self, "linked", []))
        return other

    def restart(self) -> None:
        """Put the branch back at the user's HEAD (only for a tag with no trial: nothing is lost)."""
        head = git("rev-parse", "HEAD", cwd=self.repo)
        if head != self.head():
            require_committed(self.repo, self.root, self.sub, self.editable)
            self.reset(head)

    def link_data(self, paths: list[str]) -> None:
        """Make project-relative data visible at the same relative path inside the worktree."""
        for rel in paths:
            if Path(rel).is_absolute():
                continue
            src, dst = self.root / rel, self.dir / rel
            if dst.is_symlink() and src.exists() and dst.resolve() != src.resolve():
                dst.unlink()  # linked before the project directory moved
            if dst.is_symlink() or dst.exists() or not src.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())
            self._clean = None
        self.linked = [p for p in paths if not Path(p).is_absolute()]

    # -- per trial ----------------------------------------------------------------------------
    def head(self) -> str:
        if self._head is None:
            self._head = self.store.head()
        return self._head

    def holds(self) -> str:
        """The commit whose files the worktree was last given: the last one made in it, else HEAD's."""
        return self._holds or self.head()

    def lend(self) -> None:
        """The worktree goes to someone nightlab does not watch (the agent, a run): what it holds is unknown."""
        self._clean = None

    def reset(self, commit: str, unless_clean: bool = False) -> None:
        """Put the worktree exactly at `commit` (the branch follows), dropping stray files. `unless_clean`: nothing
        to do when this object reset it there last and nobody had it since (only for callers that know every
        change to the worktree goes through this object or is announced by `lend()`, as a trial's do)."""
        if unless_clean and commit == self._clean:
            return
        self._clean = self._head = self._holds = None
        try:  # in this process; `git clean` only when untracked files are left to remove
            strays = self.checkout.reset(commit, "" if self.sub == Path(".") else self.sub.as_posix(),
                                         self.linked_paths())
        except Fallback:
            self._git("reset", "--hard", "--quiet", commit)
            strays = True
        if strays:
            excludes = [a for p in getattr(self, "linked", []) for a in ("-e", p)]
            self._git("clean", "-fdq", *excludes, "--", ".")
        self._clean = commit
        self._head = commit if len(commit) == 40 else None  # a full object name; anything else git resolves

    def changed_files(self) -> dict[str, bool]:
        return edits.changed_files(self)

    def verify_edits(self) -> dict[str, bool]:
        self._clean = None
        return edits.verify_edits(self)

    def diff(self) -> str:
        return self._git("diff", "HEAD", "--", ".")

    def commit(self, message: str, files: list[str]) -> tuple[str, str]:
        """Commit `files` as they are in the worktree; the new commit's name and its patch (under the project). The
        worktree holds the commit, HEAD stays where it was (where git must commit, it moves): a trial's commit joins
        the branch only when it is kept, so a discard moves no ref back."""
        self._clean = self._head = None
        sha = self._holds = self.store.commit([(self.sub / f).as_posix() for f in files], message, move=False)
        return sha, self.patch(sha)

    def amend(self, commit: str, message: str) -> str:
        """A commit like `commit` (its tree and parent) with `message`: `git commit --amend` without moving HEAD;
        the caller resets the worktree where it belongs next."""
        return self.store.amend(commit, message)

    def rebase(self, commit: str, onto: str) -> str | None:
        """`commit`'s change re-applied on `onto` (same message); None when it conflicts or leaves no change."""
        return edits.rebase(self, commit, onto)

    def mark(self, n: int, commit: str) -> None:
        """Keep trial n reachable whatever happens to the branch."""
        self.store.set_ref(f"refs/nightlab/{self.tag}/trial-{n}", commit)

    def show(self, commit: str, path: str) -> str:
        """The file at `path` (under the project) in `commit`, as `git show <commit>:<path>` prints it."""
        data = self.store.blob(commit, (self.sub / path).as_posix())
        if data is None:
            raise NightlabError(f"git show failed in {self.dir}: path '{path}' is not in {commit}")
        return io.TextIOWrapper(io.BytesIO(data)).read().rstrip("\n")  # as a text-mode subprocess would read it

    def patch(self, commit: str) -> str:
        """`git show --format= <commit> -- .`: the commit's change under the project, as git prints it."""
        return gitdiff.patch(self.store, commit, self.sub.as_posix(), self.dir)


def _new_branch(ws: Workspace, exists: bool) -> None:
    """Workspace.open for a new tag: its branch at the user's HEAD (what a first start killed early made goes)."""
    if exists and ws.creating.exists():  # a first start killed before its ledger existed
        log.info("tag %r was never started fully (killed before its ledger existed): starting it again", ws.tag)
        ws._undo_start()
        exists = False
    if exists:
        raise UsageError(f"branch {ws.branch} already exists but tag {ws.tag!r} has no ledger to resume; "
                         f"pick another --tag, or delete the branch (git worktree prune; git branch -D {ws.branch})")
    require_committed(ws.repo, ws.root, ws.sub, ws.editable)
    if git("rev-parse", "--verify", "--quiet", "refs/heads/nightlab", cwd=ws.repo, check=False):
        raise UsageError(f"a branch named 'nightlab' exists, so git cannot create {ws.branch}; rename it")
    ws.creating.parent.mkdir(parents=True, exist_ok=True)
    ws.creating.write_text(ws.branch + "\n")
    git("branch", ws.branch, "HEAD", cwd=ws.repo)
    crashpoint.reached("start.branch")


def _branch_again(ws: Workspace, best: str) -> None:
    """Workspace.open on resume when the branch was deleted: made again at the ledger's best commit."""
    known = best and git("rev-parse", "--verify", "--quiet", f"{best}^{{commit}}", cwd=ws.repo, check=False)
    if not known:
        raise UsageError(f"branch {ws.branch} is missing and the ledger's best commit is gone; "
                         f"cannot resume tag {ws.tag!r}")
    log.warning("branch %s was missing: made again at the best trial's commit %s", ws.branch, best[:7])
    with worktree_admin(ws.repo):
        git("worktree", "prune", cwd=ws.repo)
    git("branch", ws.branch, best, cwd=ws.repo)
