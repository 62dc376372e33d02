"""A bwrap profile for agent CLIs (claude, codex): the network stays (the agent must reach its model),
the files it may not change are read-only at the OS level, and it sees only the environment it is given.

A CLI's own permission layer is not relied on: measured with the pinned CLIs, a CLI's shell
tool inherits its environment and `acceptEdits` lets it edit any file. Here the candidate's worktree is
writable (CLIs edit by writing a temporary file and renaming it over the original, which a file bind
would refuse with EBUSY), while `.git`, the protected files and everything outside are read-only, and
the project itself (its other state, the ledger, the test split) is hidden. The harness still verifies
the diff afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from nightlab.sandbox.bwrap import SYSTEM_HIDDEN, SYSTEM_MASKED, UID, _under, bwrap_path, homes, interpreter_paths

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def _gitdirs(workdir: Path) -> list[Path]:
    """A worktree's `.git` is a file naming its git dir; git also needs the repository's common dir."""
    dot = workdir / ".git"
    if not dot.is_file():
        return []
    text = dot.read_text().strip()
    if not text.startswith("gitdir:"):
        return []
    gitdir = (workdir / text.split(":", 1)[1].strip()).resolve()
    common = gitdir / "commondir"
    found = [gitdir]
    if common.is_file():
        found.append((gitdir / common.read_text().strip()).resolve())
    return found


def agent_argv(command: list[str], workdir: Path, home: Path, env: dict[str, str], *,
               readonly: Sequence[str] = (), hidden: Sequence[Path] = (), extra_readonly: Sequence[Path] = (),
               bwrap: str | None = None) -> list[str]:
    """bwrap's argv to run an agent CLI in `workdir`. Exec it with an EMPTY environment (`env={}`).

    `readonly`: paths relative to `workdir` the agent may read but not change (protected files, the
    program); `.git` is always read-only. `home`: a private, writable HOME (the CLI's config and
    session). `env`: the agent's whole environment (e.g. its endpoint and a proxy's dummy key).
    `hidden`: e.g. the project directory; `extra_readonly`: e.g. where the CLI is installed.
    """
    workdir = Path(os.path.realpath(workdir))
    home = Path(os.path.realpath(home))
    a = [bwrap or bwrap_path() or "bwrap", "--unshare-user", "--uid", str(UID), "--gid", str(UID),
         "--cap-drop", "ALL", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
         "--new-session", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    hide = [Path(p) for p in dict.fromkeys([*SYSTEM_HIDDEN, *homes()]) if Path(p).is_dir() and not Path(p).is_symlink()]
    real = [Path(os.path.realpath(p)) for p in hidden if Path(p).exists()]
    hide += [p for p in real if not _under(p, hide)]
    for p in hide:
        a += ["--tmpfs", str(p)]
    for masked in SYSTEM_MASKED:
        if os.path.isfile(masked):
            a += ["--ro-bind", "/dev/null", masked]
    resolv = Path(os.path.realpath("/etc/resolv.conf"))
    shown = [p for p in interpreter_paths() if _under(p, hide)] + list(extra_readonly) + _gitdirs(workdir)
    if resolv.exists() and _under(resolv, hide):  # systemd-resolved keeps it under /run: DNS must still work
        shown.append(resolv)
    for p in dict.fromkeys(Path(os.path.realpath(q)) for q in shown):
        if p.exists():
            a += ["--ro-bind", str(p), str(p)]
    a += ["--bind", str(workdir), str(workdir), "--bind", str(home), str(home)]
    for rel in [".git", *readonly]:
        p = workdir / rel
        if p.exists() or p.is_symlink():
            a += ["--ro-bind", str(p), str(p)]
    a += ["--chdir", str(workdir), "--clearenv"]
    for key, value in {"PATH": BASE_PATH, **env, "HOME": str(home)}.items():
        a += ["--setenv", key, value]
    return a + ["--", *command]
