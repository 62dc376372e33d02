"""Killing nightlab at a precise point, and checking what it left: for the crash-safety tests and the chaos suite.

Two ways to name the point, neither timed:
- a named point of nightlab's own (`NIGHTLAB_CRASH_AT=<name>#<k>`, see nightlab.crashpoint);
- the k-th git call whose arguments start with some words, through a `git` first on PATH that runs the real one.
  `before`: the call kills nightlab's process group instead of running; `inside`: it runs with a
  reference-transaction hook that kills the group when git has prepared its ref updates, that is while git
  holds its lock files (`HEAD.lock`, the ref's `.lock`, and `index.lock` for a commit or a reset).
nightlab is started in a session of its own, so the kill takes exactly its process group: it, its git processes
and its training runs, as `kill -9` of a terminal's job would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from nlkit import CLI, Project

SHIM = r"""#!/bin/bash
# the real git, except the call CHAOS_GIT names ("<words>#<k>" or "<words>#<k>:inside") kills its process group
real=__REAL__
if [ -n "$CHAOS_GIT" ]; then
  args=("$@"); i=0
  while [ "${args[$i]}" = "-c" ]; do i=$((i+2)); done
  spec="${CHAOS_GIT%:inside}"; words="${spec%#*}"; nth="${spec##*#}"
  if [[ "${args[*]:$i}" == "$words"* ]]; then
    n=$( { flock 9; c=$(( $(cat "$CHAOS_DIR/count" 2>/dev/null || echo 0) + 1 ))
           echo $c >"$CHAOS_DIR/count"; echo $c; } 9>"$CHAOS_DIR/lock")
    if [ "$n" = "$nth" ]; then
      echo "${args[*]:$i}" >"$CHAOS_DIR/hit"
      [ "$spec" != "$CHAOS_GIT" ] && exec "$real" "${args[@]:0:$i}" -c core.hooksPath="$CHAOS_DIR/hooks" "${args[@]:$i}"
      kill -9 0
    fi
  fi
fi
exec "$real" "$@"
"""
HOOK = """#!/bin/sh
[ "$1" = prepared ] && kill -9 0
exit 0
"""


def chaos_env(proj: Project, where: Path, git_at: str = "", crash_at: str = "") -> dict[str, str]:
    """The project's environment with the kill point set: `git_at` for the git shim, `crash_at` for nightlab's own."""
    bin_dir, hooks = where / "bin", where / "hooks"
    if not (bin_dir / "git").exists():
        bin_dir.mkdir(parents=True, exist_ok=True)
        hooks.mkdir(parents=True, exist_ok=True)
        real = shutil.which("git")
        assert real, "git is not installed"
        (bin_dir / "git").write_text(SHIM.replace("__REAL__", real))
        (hooks / "reference-transaction").write_text(HOOK)
        for f in (bin_dir / "git", hooks / "reference-transaction"):
            f.chmod(0o755)
    for f in ("count", "hit"):
        (where / f).unlink(missing_ok=True)
    env = proj.env | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CHAOS_DIR": str(where)}
    if git_at:
        env["CHAOS_GIT"] = git_at
    if crash_at:
        env["NIGHTLAB_CRASH_AT"] = crash_at
    return env


def start(proj: Project, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], cwd=proj.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    """Its exit code and output, once every process of its group is gone (a git or a run killed with it
    takes a moment to exit; the next start must not see it)."""
    out, _ = proc.communicate(timeout=timeout)
    gone(proc.pid)
    return proc.returncode, out


def gone(pgid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process group {pgid} outlived its kill")


def nightlab(proj: Project, *args: str, env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    return finish(start(proj, *args, env=env), timeout)


def killed(proj: Project, where: Path, *args: str, git_at: str = "", crash_at: str = "") -> str:
    """Run nightlab with a kill point that must be reached; its output."""
    code, out = nightlab(proj, *args, env=chaos_env(proj, where, git_at, crash_at))
    assert code == -signal.SIGKILL, f"the kill point {git_at or crash_at} was not reached (exit {code}):\n{out}"
    return out


def resumed(proj: Project, *args: str) -> str:
    """Run nightlab again with no kill point; it must succeed. Its output."""
    code, out = nightlab(proj, *args, env=proj.env)
    assert code == 0, f"nightlab {' '.join(args)} failed after the kill (exit {code}):\n{out}"
    return out


def common_dir(proj: Project) -> Path:
    return proj.dir / ".git"


def locks(proj: Project) -> list[str]:
    """Every git lock file in the repository."""
    return sorted(str(p.relative_to(common_dir(proj))) for p in common_dir(proj).rglob("*.lock"))


def worktree_troubles(proj: Project) -> list[str]:
    """Worktrees git lists as locked or prunable."""
    listing = proj.git("worktree", "list", "--porcelain")
    return [line for line in listing.splitlines() if line.startswith(("locked", "prunable"))]
