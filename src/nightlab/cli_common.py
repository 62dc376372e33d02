"""What every command of the CLI shares: the consoles, the common options, loading the config, the tag's ledger
and its lock. Imports stay light here: `nightlab status` must answer fast, so heavy modules are imported where used."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from nightlab.config import Config
    from nightlab.ledger import Ledger

console = Console(highlight=False, soft_wrap=True)
# emoji codes off: an error naming a plug-in path like `mod:X` shows it as written, not with an emoji for `:X:`
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
# Piped or logged, a line stays whole whatever its length (greppable); on a terminal, rich wraps and crops
# at its width, so nothing runs past the right edge.
console.soft_wrap, err.soft_wrap = not console.is_terminal, not err.is_terminal
log = logging.getLogger("nightlab")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Path to nightlab.toml (default: search upward).")]
TagOpt = Annotated[str | None, typer.Option("--tag", help="Run tag (default: the most recent one, or 'run').")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def load_config(path: Path | None) -> Config:
    from nightlab import config

    return config.load(path)


def tag_of(cfg: Config, tag: str | None) -> str:
    from nightlab import project

    return project.check_tag(tag) if tag else project.latest_tag(cfg)


def existing(cfg: Config, tag: str) -> Ledger:
    from nightlab.ledger import Ledger
    from nightlab.tags import ledger_path

    return Ledger(ledger_path(cfg.root, tag))
