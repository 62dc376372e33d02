"""A trial's edits in its worktree: the check of what an agent changed (only the editable files and the scratchpad
may change), and a change re-applied on another commit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from nightlab.errors import EditRejected, NightlabError
from nightlab.gitcmd import NO_HOOKS, git, printable
from nightlab.gitobjects import Fallback

if TYPE_CHECKING:
    from nightlab.workspace import Workspace


def changed_files(ws: Workspace) -> dict[str, bool]:
    """Files that differ from HEAD anywhere in the worktree, relative to the project → whether git tracks them
    (what `git status` lists: changed, deleted and new files; ignored ones are not edits). Found in this process
    (gitworktree.py), else by git."""
    try:
        found = ws.checkout.status(ws.linked_paths())
    except Fallback:
        found = ws.checkout.learn()
    files = {os.path.relpath(path, ws.sub): tracked for path, tracked in found.items()}
    linked = [Path(p) for p in getattr(ws, "linked", [])]  # data nightlab put there, not an edit
    return {f: files[f] for f in sorted(files) if not any(Path(f) == p or p in Path(f).parents for p in linked)}


def verify_edits(ws: Workspace) -> dict[str, bool]:
    """Accept only edits to editable files and the scratchpad (→ whether git tracks each); restore anything
    else. A refusal carries the worktree's diff as it was (`EditRejected.diff`): the attempt stays on record."""
    allowed = set(ws.editable) | {ws.scratchpad}
    files = changed_files(ws)
    bad = [f for f in files if f not in allowed]
    if bad:
        shown = ", ".join(printable(f) for f in bad)
        rejected = EditRejected(f"changed {shown} (only {', '.join(sorted(allowed))} may change)")
        rejected.diff = ws.diff()
        restore(ws, bad)
        raise rejected
    if not [f for f in files if f in ws.editable]:
        rejected = EditRejected("no change to " + ", ".join(ws.editable))
        rejected.diff = ws.diff()
        raise rejected
    return files


def restore(ws: Workspace, files: list[str]) -> None:
    """Put `files` (relative to the project) back as HEAD has them; those git does not track are removed."""
    tracked = set(git("ls-files", "--", *files, cwd=ws.dir).splitlines())
    if tracked:
        git("-c", NO_HOOKS, "checkout", "HEAD", "--", *sorted(tracked), cwd=ws.dir, env=ws.env)
    for f in set(files) - tracked:
        p = ws.dir / f
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def rebase(ws: Workspace, commit: str, onto: str) -> str | None:
    """`commit`'s change re-applied on `onto` (same message) in `ws`; None when it conflicts or leaves no change."""
    ws.reset(onto)
    ws.lend()  # the cherry-pick changes it
    # Notes never conflict: both sides' lines are kept (git's built-in union merge, for the scratchpad only).
    attributes = ws.root / ".nightlab" / ws.tag / "rebase.gitattributes"
    attributes.write_text(f"/{(ws.sub / ws.scratchpad).as_posix()} merge=union\n")
    try:
        git("-c", NO_HOOKS, "-c", f"core.attributesFile={attributes}", "cherry-pick", "--no-commit", commit,
            cwd=ws.dir, env=ws.env)
    except NightlabError:  # a conflict: the two changes touch the same lines
        git("cherry-pick", "--abort", cwd=ws.dir, check=False, env=ws.env)
        ws.reset(onto)
        return None
    files = [f for f in changed_files(ws) if f in ws.editable or f == ws.scratchpad]
    if not any(f in ws.editable for f in files):  # the new best already holds this change
        ws.reset(onto)
        return None
    return ws.commit(git("log", "-1", "--format=%B", commit, cwd=ws.dir, env=ws.env), files)[0]
