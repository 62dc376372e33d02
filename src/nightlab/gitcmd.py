"""Running a git command: nightlab's settings for every git process it starts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from nightlab.errors import NightlabError

# The user's hooks (post-checkout, post-commit) are not for nightlab's own checkout and commits (as --no-verify).
NO_HOOKS = "core.hooksPath=/dev/null"
# No opportunistic index refresh (`git diff`, `git status` in the user's checkout): a kill must never leave an
# index.lock there, where nightlab could not tell it from the user's own.
QUIET = {"GIT_OPTIONAL_LOCKS": "0"}


def git(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> str:
    # core.quotePath=false: paths come back as written ("modèle.py"), not as octal escapes; a name that is not
    # UTF-8 comes back as os.fsdecode gives it (surrogate escapes), the same string a scan of the directory finds
    proc = subprocess.run(["git", "-c", "core.quotePath=false", *args], cwd=cwd, capture_output=True, text=True,
                          errors="surrogateescape",
                          env={**os.environ, **(env or {}), "GIT_TERMINAL_PROMPT": "0", **QUIET})
    if check and proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}").splitlines()[-1]
        command = next(a for i, a in enumerate(args) if a != "-c" and (i == 0 or args[i - 1] != "-c"))
        raise NightlabError(f"git {command} failed in {cwd}: {printable(said)}")
    return proc.stdout.rstrip("\n")


def printable(text: str) -> str:
    """git's text as any terminal and the ledger can hold it: bytes that were not UTF-8 (surrogate escapes) shown
    as U+FFFD."""
    return text.encode(errors="surrogateescape").decode(errors="replace")
