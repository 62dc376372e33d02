"""The git side of a run: branch, worktree, trial commits and refs, edit verification, checksums."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nightlab import crashpoint, repair
from nightlab.config import CONFIG_NAME, same_but_endpoint
from nightlab.errors import EditRejected, NightlabError, UsageError

log = logging.getLogger(__name__)

# Used only when neither the repository nor the user names anyone, so commits never fail.
IDENTITY = {"GIT_AUTHOR_NAME": "nightlab", "GIT_AUTHOR_EMAIL": "nightlab@localhost"}
IDENTITY |= {"GIT_COMMITTER_NAME": "nightlab", "GIT_COMMITTER_EMAIL": "nightlab@localhost"}
# The user's hooks (post-checkout, post-commit) are not for nightlab's own checkout and commits (as --no-verify).
NO_HOOKS = "core.hooksPath=/dev/null"
# No opportunistic index refresh (`git diff`, `git status` in the user's checkout): a kill must never leave an
# index.lock there, where nightlab could not tell it from the user's own.
QUIET = {"GIT_OPTIONAL_LOCKS": "0"}


def git(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> str:
    # core.quotePath=false: paths come back as written ("modèle.py"), not as octal escapes
    proc = subprocess.run(["git", "-c", "core.quotePath=false", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {}), "GIT_TERMINAL_PROMPT": "0", **QUIET})
    if check and proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()[-1]
        command = next(a for i, a in enumerate(args) if a != "-c" and (i == 0 or args[i - 1] != "-c"))
        raise NightlabError(f"git {command} failed in {cwd}: {said}")
    return proc.stdout.rstrip("\n")


def toplevel(path: Path) -> Path:
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UsageError(f"{path} is not inside a git repository (run `git init` and commit your project first)")
    return Path(proc.stdout.strip()).resolve()


def identity_env(cwd: Path) -> dict[str, str]:
    """nightlab's own identity for the parts git has no configured value for."""
    env = {}
    for who in ("AUTHOR", "COMMITTER"):
        for what, key in (("NAME", "user.name"), ("EMAIL", "user.email")):
            if not git("config", key, cwd=cwd, check=False) and not os.environ.get(f"GIT_{who}_{what}"):
                env[f"GIT_{who}_{what}"] = IDENTITY[f"GIT_{who}_{what}"]
    return env


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
    with open(repair.common_dir(repo) / "nightlab-worktrees.flock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


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
        self._env = identity_env(self.repo)
        # What this object last made the worktree, so a trial does not pay a git process to learn it again:
        # `_head` is HEAD after nightlab's last commit or reset; `_clean` the commit the worktree was last reset
        # to, until it is lent (to the agent, a run) or changed. A new process knows neither: it asks git.
        self._head: str | None = None
        self._clean: str | None = None

    def _git(self, *args: str, check: bool = True) -> str:
        return git(*args, cwd=self.dir, check=check, env=self._env)

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
            if exists and self.creating.exists():  # a first start killed before its ledger existed
                log.info("tag %r was never started fully (killed before its ledger existed): starting it again",
                         self.tag)
                self._undo_start()
                exists = False
            if exists:
                raise UsageError(f"branch {self.branch} already exists but tag {self.tag!r} has no ledger to resume; "
                                 "pick another --tag, or delete the branch "
                                 f"(git worktree prune; git branch -D {self.branch})")
            require_committed(self.repo, self.root, self.sub, self.editable)
            if git("rev-parse", "--verify", "--quiet", "refs/heads/nightlab", cwd=self.repo, check=False):
                raise UsageError(f"a branch named 'nightlab' exists, so git cannot create {self.branch}; rename it")
            self.creating.parent.mkdir(parents=True, exist_ok=True)
            self.creating.write_text(self.branch + "\n")
            git("branch", self.branch, "HEAD", cwd=self.repo)
            crashpoint.reached("start.branch")
        elif not exists:
            known = best and git("rev-parse", "--verify", "--quiet", f"{best}^{{commit}}", cwd=self.repo, check=False)
            if not known:
                raise UsageError(f"branch {self.branch} is missing and the ledger's best commit is gone; "
                                 f"cannot resume tag {self.tag!r}")
            log.warning("branch %s was missing: made again at the best trial's commit %s", self.branch, best[:7])
            with worktree_admin(self.repo):
                git("worktree", "prune", cwd=self.repo)
            git("branch", self.branch, best, cwd=self.repo)
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
        with worktree_admin(self.repo):
            self._attach_locked(tree, ref, *flags)

    def _attach_locked(self, tree: Path, ref: str, *flags: str) -> None:
        if (tree / ".git").exists():  # links both ways hold absolute paths: mend them if the project moved
            git("worktree", "repair", str(tree), cwd=self.repo, check=False)
            if git("rev-parse", "--verify", "--quiet", "HEAD", cwd=tree, check=False):
                return
            log.warning("worktree %s was unusable (a kill while git made it?): making it again", tree)
        if repair.made_by_git(tree):
            repair.discard(self.repo, tree)
        git("worktree", "prune", cwd=self.repo)
        git("-c", NO_HOOKS, "worktree", "add", "--quiet", *flags, str(tree), ref, cwd=self.repo)

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
            self._head = self._git("rev-parse", "HEAD")
        return self._head

    def lend(self) -> None:
        """The worktree goes to someone nightlab does not watch (the agent, a run): what it holds is unknown."""
        self._clean = None

    def reset(self, commit: str, unless_clean: bool = False) -> None:
        """Put the worktree exactly at `commit` (the branch follows), dropping stray files. `unless_clean`: nothing
        to do when this object reset it there last and nobody had it since (only for callers that know every
        change to the worktree goes through this object or is announced by `lend()`, as a trial's do)."""
        if unless_clean and commit == self._clean:
            return
        self._clean = self._head = None
        self._git("reset", "--hard", "--quiet", commit)
        excludes = [a for p in getattr(self, "linked", []) for a in ("-e", p)]
        self._git("clean", "-fdq", *excludes, "--", ".")
        self._clean = commit
        self._head = commit if len(commit) == 40 else None  # a full object name; anything else git resolves

    def changed_files(self) -> dict[str, bool]:
        """Files that differ from HEAD anywhere in the worktree, relative to the project → whether git tracks them
        (one `git status`: changed, deleted and new files; ignored ones are not edits)."""
        out = git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames", cwd=self.tree)
        files = {}
        for entry in filter(None, out.split("\0")):
            files[os.path.relpath(entry[3:], self.sub)] = not entry.startswith("??")
        linked = [Path(p) for p in getattr(self, "linked", [])]  # data nightlab put there, not an edit
        return {f: files[f] for f in sorted(files) if not any(Path(f) == p or p in Path(f).parents for p in linked)}

    def verify_edits(self) -> dict[str, bool]:
        """Accept only edits to editable files and the scratchpad (→ whether git tracks each); restore anything
        else. A refusal carries the worktree's diff as it was (`EditRejected.diff`): the attempt stays on record."""
        self._clean = None
        allowed = set(self.editable) | {self.scratchpad}
        files = self.changed_files()
        bad = [f for f in files if f not in allowed]
        if bad:
            rejected = EditRejected(f"changed {', '.join(bad)} (only {', '.join(sorted(allowed))} may change)")
            rejected.diff = self.diff()
            self._restore(bad)
            raise rejected
        if not [f for f in files if f in self.editable]:
            rejected = EditRejected("no change to " + ", ".join(self.editable))
            rejected.diff = self.diff()
            raise rejected
        return files

    def _restore(self, files: list[str]) -> None:
        tracked = set(self._git("ls-files", "--", *files).splitlines())
        if tracked:
            self._git("-c", NO_HOOKS, "checkout", "HEAD", "--", *sorted(tracked))
        for f in set(files) - tracked:
            p = self.dir / f
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)

    def diff(self) -> str:
        return self._git("diff", "HEAD", "--", ".")

    def commit(self, message: str, files: list[str]) -> tuple[str, str]:
        """Commit `files` as they are in the worktree; the new commit's name and its patch (under the project)."""
        self._clean = self._head = None
        self._git("add", "--", *files)
        self._git("-c", "commit.gpgsign=false", "-c", NO_HOOKS, "commit", "--quiet", "--no-verify", "-m", message)
        sha, _, patch = self._git("show", "--format=%H", "HEAD", "--", ".").partition("\n")
        self._head = sha
        return sha, patch.lstrip("\n")

    def amend(self, commit: str, message: str) -> str:
        """A commit like `commit` (its tree and parent) with `message`: `git commit --amend` without moving HEAD,
        in one git process (plumbing); the caller resets the worktree where it belongs next."""
        # a trial's commit has one parent: the commit it was made on
        return self._git("-c", "commit.gpgsign=false", "commit-tree", f"{commit}^{{tree}}", "-p", f"{commit}^",
                         "-m", message)

    def rebase(self, commit: str, onto: str) -> str | None:
        """`commit`'s change re-applied on `onto` (same message); None when it conflicts or leaves no change."""
        self.reset(onto)
        self._clean = None  # the cherry-pick changes it
        # Notes never conflict: both sides' lines are kept (git's built-in union merge, for the scratchpad only).
        attributes = self.root / ".nightlab" / self.tag / "rebase.gitattributes"
        attributes.write_text(f"/{(self.sub / self.scratchpad).as_posix()} merge=union\n")
        try:
            self._git("-c", NO_HOOKS, "-c", f"core.attributesFile={attributes}", "cherry-pick", "--no-commit", commit)
        except NightlabError:  # a conflict: the two changes touch the same lines
            self._git("cherry-pick", "--abort", check=False)
            self.reset(onto)
            return None
        files = [f for f in self.changed_files() if f in self.editable or f == self.scratchpad]
        if not any(f in self.editable for f in files):  # the new best already holds this change
            self.reset(onto)
            return None
        return self.commit(self._git("log", "-1", "--format=%B", commit), files)[0]

    def mark(self, n: int, commit: str) -> None:
        """Keep trial n reachable whatever happens to the branch."""
        self._git("update-ref", f"refs/nightlab/{self.tag}/trial-{n}", commit)

    def show(self, commit: str, path: str) -> str:
        return self._git("show", f"{commit}:{(self.sub / path).as_posix()}")

    def patch(self, commit: str) -> str:
        return self._git("show", "--format=", commit, "--", ".")
