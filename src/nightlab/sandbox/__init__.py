"""The Sandbox role, and backends chosen by short name (imported only when used)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import ClassVar, Protocol

from nightlab.errors import UsageError
from nightlab.plugins import SANDBOXES, plugin
from nightlab.sandbox.probe import choose_auto
from nightlab.types import RunResult, RunSpec

# A name like these never reaches a run, even when listed in [run] env.
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH")
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


class Sandbox(Protocol):
    name: str
    # Whether the run is confined: it can write only its run directory (and a private /tmp), sees only its
    # own processes (so no caller's environment through /proc), and nothing it starts outlives it, not even
    # a process that leaves its session. False for `process`, a plain child process of the harness; a
    # backend of your own that does not set it is taken as not isolated. Every backend, isolated or not,
    # ends a run at its deadline, gives it only the environment run_env() builds, and ends the processes
    # of its session with it (tests/test_sandbox_contract.py holds each backend to what it declares).
    isolated: ClassVar[bool] = False

    def run(self, spec: RunSpec) -> RunResult:
        """Run `spec.command` in `spec.cwd` within `spec.timeout_s`, output to `spec.run_dir/spec.log_name`."""
        ...


def load_sandbox(name: str) -> Sandbox:
    if name == "auto":  # bwrap, docker or podman, whichever works first; never `process` (no isolation)
        name = choose_auto()
    return plugin(name, SANDBOXES, f"unknown sandbox {name!r} (known: auto, {{known}}; or module:Class)")()


SHELL_SYNTAX = set("|&;<>()$`\\\"'*?[]#~=%{}\n")


def interpreter_command(command: str) -> str:
    """`python` at the start of a command means the interpreter nightlab runs under."""
    words = command.split(maxsplit=1)
    if words and words[0] in ("python", "python3"):
        return shlex.quote(sys.executable) + (" " + words[1] if len(words) > 1 else "")
    return command


def argv(command: str) -> list[str]:
    """The command as an argv; through /bin/sh only when it uses shell syntax.

    Exec'ing directly keeps the training process itself the child, so it dies with the harness
    (PR_SET_PDEATHSIG is not inherited by a shell's children).
    """
    command = interpreter_command(command)
    if SHELL_SYNTAX.isdisjoint(command.replace(shlex.quote(sys.executable), "")):
        return shlex.split(command)
    return ["/bin/sh", "-c", command]


def run_env(spec: RunSpec) -> dict[str, str]:
    """The whole environment of a run: nothing from the caller but what the config lists."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:{BASE_PATH}",
        "HOME": str(spec.run_dir),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # keeps the worktree free of stray files
        "NIGHTLAB_RUN_DIR": str(spec.run_dir),
        "NIGHTLAB_BUDGET_S": f"{spec.budget_s:g}",
        "NIGHTLAB_SEED": str(spec.seed),
        "NIGHTLAB_TRIAL": str(spec.trial),
    }
    ids = spec.gpus.replace(" ", "")
    if ids and ids.lower() not in ("all", "none"):  # a slot's own GPUs, numbered as nvidia-smi does
        env |= {"CUDA_VISIBLE_DEVICES": ids, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    return env | spec.env


def passthrough(names: list[str], source: str) -> dict[str, str]:
    """The caller variables a config lists for runs; secrets are refused outright."""
    for name in names:
        if any(m in name.upper() for m in SECRET_MARKERS):
            raise UsageError(f"{source}: run.env: {name} looks like a secret; secrets never reach a run")
    return {n: os.environ[n] for n in names if n in os.environ}
