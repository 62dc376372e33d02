"""Finding a role's implementation (agent, sandbox, executor) by short name or `module:Class`, imported on use.

The built-in sandboxes and executors are named here, at the bottom of the layers, so that the config can
check a name when it is read, before anything is imported.
"""

from __future__ import annotations

import importlib
import re

from nightlab.errors import UsageError

SANDBOXES = {"bwrap": "nightlab.sandbox.bwrap:BwrapSandbox", "docker": "nightlab.sandbox.container:DockerSandbox",
             "podman": "nightlab.sandbox.container:PodmanSandbox", "process": "nightlab.sandbox.process:ProcessSandbox"}
EXECUTORS = {"local": "nightlab.executors.local:LocalExecutor", "ray": "nightlab.executors.ray:RayExecutor",
             "slurm": "nightlab.executors.slurm:SlurmExecutor", "ssh": "nightlab.executors.ssh:SshExecutor"}
PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def is_path(name: str) -> bool:
    """Whether `name` reads as a `module:Class` path (`package.module:Class`)."""
    return PATH.fullmatch(name) is not None


def plugin(name: str, known: dict[str, str], unknown: str) -> type:
    """The class `name` stands for: a short name in `known` (short name → `module:Class`), or a `module:Class`
    path of its own. `unknown`: the error for anything else, with `{known}` replaced by the short names.
    A path whose module or class is not there is a one-line error too; a module that is there but fails
    to import raises as it would anywhere."""
    target = known.get(name, name)
    if not is_path(target):
        raise UsageError(unknown.replace("{known}", ", ".join(known)))
    module_name, _, cls = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise  # the plug-in's module is there; something it imports is not
        raise UsageError(f"{target}: no module named {e.name!r} (a module:Class plug-in must be importable, "
                         "e.g. from PYTHONPATH)") from None
    if not isinstance(found := getattr(module, cls, None), type):
        raise UsageError(f"{target}: module {module_name} has no class {cls}")
    return found
