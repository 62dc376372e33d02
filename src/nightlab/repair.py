"""Mending what a killed nightlab leaves in git: stale lock files and half-made worktrees of its own.

A kill -9 takes nightlab's git processes down with it, possibly halfway. Git then keeps its lock files
(`index.lock`, `HEAD.lock`, a ref's `.lock`) and every later command that needs them fails; and a `git worktree
add` killed halfway leaves an admin directory (`.git/worktrees/<id>`) locked "initializing", or one without its
`commondir`, which makes `git branch` and `git worktree list` fail for the whole repository. At each start,
under the tag's lock, nightlab removes such leftovers, but only where they are its own (worktrees under a
`.nightlab/` directory, refs under `nightlab/`) and only once no git process works in the repository: a live
one may hold a lock rightly, or be making a worktree right now.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

STATE = ".nightlab"
NULL_OID = "0" * 40
# The worktrees' mutex (workspace.worktree_admin takes it exclusively, in-process ref updates shared: gitrefs.py).
ADMIN_MUTEX = "nightlab-worktrees.flock"
GONE_WAIT_S = 10.0  # how long a git process killed with its parent may take to exit before nothing is mended


def common_dir(repo: Path) -> Path:
    """The repository's git directory (rev-parse reads no worktree list, so a broken one does not stop it)."""
    proc = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=repo, capture_output=True, text=True)
    path = Path(proc.stdout.strip())
    return path if path.is_absolute() else (repo / path).resolve()


def git_processes(repo: Path) -> set[int]:
    """The git processes working in `repo` or below it (by working directory), this process's own excluded."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if not Path(f"/proc/{entry.name}/comm").read_text().startswith("git"):
                continue
            cwd = Path(os.readlink(f"/proc/{entry.name}/cwd"))
        except OSError:  # gone meanwhile, or a zombie
            continue
        if cwd == repo or repo in cwd.parents:
            found.add(int(entry.name))
    return found


def quiet(repo: Path, wait_s: float = GONE_WAIT_S) -> bool:
    """Whether no git process works in `repo`; those there now get `wait_s` to end (one killed with nightlab is
    still exiting for a moment after it), new ones are not waited for."""
    running = git_processes(repo)
    deadline = time.monotonic() + wait_s
    while running and time.monotonic() < deadline:
        time.sleep(0.02)
        running &= git_processes(repo)
    return not running


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def own_admin_dirs(common: Path, repo: Path) -> dict[Path, Path]:
    """nightlab's worktrees: admin directory → worktree, for those whose worktree is under a `.nightlab/`."""
    out = {}
    for admin in sorted((common / "worktrees").glob("*")):
        tree = Path(_read(admin / "gitdir")).parent
        if STATE in tree.parts and (tree == repo or repo in tree.parents):
            out[admin] = tree
    return out


def half_made(admin: Path, tree: Path) -> str:
    """What is missing from a worktree `git worktree add` did not finish ('' when it is whole, or when the user
    removed the worktree's directory: git prunes that one itself)."""
    if not tree.exists():
        return ""
    if _read(admin / "locked") == "initializing":
        return "locked initializing"
    if not _read(admin / "commondir"):
        return "no commondir"
    if _read(admin / "HEAD") in ("", NULL_OID):
        return "no HEAD"
    if not (tree / ".git").is_file():
        return "no .git link"
    return ""


def own_locks(common: Path, admins: dict[Path, Path]) -> list[Path]:
    """Lock files in nightlab's own places: its worktrees' admin directories, its branches and trial refs, and
    packed-refs (which deleting or packing one of its refs takes)."""
    found = [lock for admin in admins for lock in admin.glob("*.lock")]
    for refs in (common / "refs" / "heads" / "nightlab", common / "refs" / "nightlab"):
        found += refs.rglob("*.lock")
    return found + [p for p in [common / "packed-refs.lock"] if p.exists()]


def made_by_git(tree: Path) -> bool:
    """Whether `tree` is a worktree git made, whole or half (git writes its `.git` link before anything else
    goes in): a directory git did not make is the user's, and nightlab leaves it alone."""
    return tree.is_dir() and ((tree / ".git").exists() or not any(tree.iterdir()))


def discard(repo: Path, tree: Path, admin: Path | None = None) -> None:
    """Remove one of nightlab's worktrees, whatever state it is in (it holds no one's work: a trial's edits are
    committed or proposed again, run outputs live elsewhere)."""
    if admin is None:
        admin = Path(_read(tree / ".git").removeprefix("gitdir:").strip() or "/nonexistent")
    if admin.is_dir() and admin.parent.name == "worktrees":
        shutil.rmtree(admin, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)  # symlinks to data are removed, never followed
    subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)


def mend(repo: Path) -> list[str]:
    """Clear stale locks and half-made worktrees nightlab left in `repo`; what was done, for the log."""
    common = common_dir(repo)
    admins = own_admin_dirs(common, repo)
    locks = own_locks(common, admins)
    broken = {admin: why for admin, tree in admins.items() if (why := half_made(admin, tree))}
    if not locks and not broken:
        return []
    if not quiet(repo):
        log.warning("git is running in %s: left %d lock(s) and %d half-made worktree(s) as they are",
                    repo, len(locks), len(broken))
        return []
    done = []
    for lock in locks:
        lock.unlink(missing_ok=True)
        done.append(f"removed stale {lock.relative_to(common)}")
    for admin, why in broken.items():
        discard(repo, admins[admin], admin)
        done.append(f"removed half-made worktree {admins[admin]} ({why})")
    for line in done:
        log.info("%s (left by a nightlab that was killed)", line)
    return done
