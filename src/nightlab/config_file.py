"""Where nightlab.toml is: found upward from the current directory. Stdlib only, so that the read-only commands
find it without loading the config schema (config.py re-exports both names)."""

from __future__ import annotations

from pathlib import Path

from nightlab.errors import UsageError

CONFIG_NAME = "nightlab.toml"


def find_config(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    if ".nightlab" in here.parts:  # inside a tag's worktree: its nightlab.toml is a copy; the project is above
        here = Path(*here.parts[:here.parts.index(".nightlab")])
    for d in [here, *here.parents]:
        if (d / CONFIG_NAME).is_file():
            return d / CONFIG_NAME
    raise UsageError(f"no {CONFIG_NAME} in {here} or its parents (run `nightlab init` first, or pass --config FILE)")
