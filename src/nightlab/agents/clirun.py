"""Running an agent CLI (claude, codex) for one trial: where it is, its private state, its sandbox.

A CLI runs with an environment built from nothing (no API keys: those stay in the key proxy), a private
HOME and TMPDIR under the tag's state directory, its own permission layer locked down, and a timeout
that kills its whole process group. Where bwrap works (`[agent] sandbox`), it also runs inside the
agent profile of `nightlab.sandbox.agent_profile`: the worktree writable, `.git` and the protected files
read-only at the OS level, the project and other homes hidden. The harness's diff check afterwards is
the backstop either way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from nightlab.agents import toolloop
from nightlab.config import Config
from nightlab.errors import AgentFailed, UsageError

# How a CLI agent's trial ends: it has its own tools and no `finish`, so its final reply names the change
# (claude_code.reply_lines reads these lines). The brief closes with REPLY; the system prompt says it too.
REPLY = """When you are done, end your reply with exactly two lines:
DESCRIPTION: <one line: what you changed>
HYPOTHESIS: <one sentence: why it should help>"""
END = "end your reply with a DESCRIPTION line and a HYPOTHESIS line"
LAST = "- Always end with those two lines (below). Without them the trial has no description."

# `make test` installs the pinned CLIs here (npm, inside the repository, git-ignored).
TOOLS = Path(__file__).resolve().parents[3] / ".nightlab-tools"
PATH = "/usr/local/bin:/usr/bin:/bin"


def system_prompt(cfg: Config) -> str:
    return toolloop.system_prompt(cfg, END, LAST) + "\n" + REPLY


def find_cli(configured: str, name: str) -> str:
    """`[agent] command`, else the copy `make test` installed, else `name` on PATH."""
    if configured:
        found = shutil.which(configured)
        if not found:
            raise UsageError(f"[agent] command {configured!r}: not found or not executable")
        return found
    local = TOOLS / name / "node_modules" / ".bin" / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise UsageError(f"agent needs the `{name}` CLI: install it (see README, Agents) or set [agent] command")
    return found


def private_home(state_dir: Path, name: str) -> Path:
    home = Path(state_dir) / f"{name}-home"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    return home


def base_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """An environment from nothing: only what a CLI needs to start, plus `extra`."""
    env = {"PATH": PATH, "HOME": str(home), "TMPDIR": str(home / "tmp"), "LANG": "C.UTF-8", "TERM": "dumb",
           "USER": os.environ.get("USER", "nightlab")}
    return env | extra


def sandboxed(argv: list[str], workdir: Path, home: Path, env: dict[str, str], cfg: Config,
              installs: list[Path]) -> tuple[list[str], dict[str, str], str]:
    """(argv, env, a note for the transcript): wrapped in the bwrap agent profile when configured and working."""
    if cfg.agent.sandbox == "none":
        return argv, env, "sandbox: none ([agent] sandbox = \"none\"): the CLI ran with only its own permission layer"
    from nightlab.sandbox.agent_profile import agent_argv
    from nightlab.sandbox.probe import probe_bwrap

    ok, said = probe_bwrap()
    if not ok:
        if cfg.agent.sandbox == "bwrap":
            raise UsageError(f"[agent] sandbox = \"bwrap\", but bwrap does not work here: {said}")
        return argv, env, f"sandbox: none (bwrap does not work here: {said})"
    wrapped = agent_argv(argv, workdir, home, env, readonly=list(cfg.project.protected), hidden=[cfg.root],
                         extra_readonly=installs, bwrap=said)
    return wrapped, {}, "sandbox: bwrap agent profile (.git and protected files read-only)"


def install_dirs(*programs: str | None) -> list[Path]:
    """Where programs really live (a node_modules tree, a node install), to stay visible in the sandbox."""
    dirs = []
    for prog in filter(None, programs):
        real = Path(os.path.realpath(prog))
        tree = next((p.parent for p in real.parents if p.name == "node_modules"), real.parent.parent)
        dirs.append(tree)
    return dirs


def run_cli(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float,
            name: str) -> subprocess.CompletedProcess:
    """Run to completion; on timeout kill its whole process group. AgentFailed when it cannot start or times out."""
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as e:
        raise AgentFailed(f"could not start {name}: {e}") from None
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a descendant that left the group still holds the pipes
            pass
        raise AgentFailed(f"{name} timed out after {timeout_s:g} s ([agent] timeout_s)") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def tail(text: str, lines: int = 5) -> str:
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:] if ln.strip())[:400]


def web_allowed(phase: str, allow_web: list[int]) -> bool:
    """Whether the brief's phase (a label such as '5 Moonshots') is one that may use web tools."""
    number = phase.split(" ", 1)[0]
    return number.isdigit() and int(number) in allow_web
