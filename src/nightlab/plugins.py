"""Finding a role's implementation (agent, sandbox, executor) by short name or `module:Class`, imported on use."""

from __future__ import annotations

import importlib

from nightlab.errors import UsageError


def plugin(name: str, known: dict[str, str], unknown: str) -> type:
    """The class `name` stands for: a short name in `known` (short name → `module:Class`), or a `module:Class`
    path of its own. `unknown`: the error for anything else, with `{known}` replaced by the short names."""
    target = known.get(name, name)
    if ":" not in target:
        raise UsageError(unknown.format(known=", ".join(known)))
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
