"""`nightlab accept N` and `nightlab reject N`: a person's word on a win the audit held (review.py)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from nightlab.cli_common import console, existing, load_config, tag_of
from nightlab.taglock import tag_lock

TrialArg = Annotated[int, typer.Argument(help="The held trial's number.", min=1)]


def accept(n: TrialArg, config_path: Annotated[str | None, typer.Option("--config", help="Path to nightlab.toml.")]
           = None, tag: Annotated[str | None, typer.Option("--tag", help="Run tag (default: the most recent).")]
           = None) -> None:
    """Accept a win the audit held: it becomes a keep and the branch moves to it."""
    _decide(n, config_path, tag, accepted=True)


def reject(n: TrialArg, config_path: Annotated[str | None, typer.Option("--config", help="Path to nightlab.toml.")]
           = None, tag: Annotated[str | None, typer.Option("--tag", help="Run tag (default: the most recent).")]
           = None) -> None:
    """Reject a win the audit held: it becomes a discard; the branch stays at the last clean best."""
    _decide(n, config_path, tag, accepted=False)


def _decide(n: int, config_path: str | None, tag: str | None, accepted: bool) -> None:
    from pathlib import Path

    from nightlab import project, review
    from nightlab.views import write_tsv

    cfg = load_config(Path(config_path) if config_path else None)
    tag = tag_of(cfg, tag)
    state = project.state_dir(cfg, tag)
    ledger = existing(cfg, tag)
    try:
        with tag_lock(state):  # not while `nightlab run` moves the branch and writes the ledger
            rec = review.accept(cfg, tag, ledger, n) if accepted else review.reject(ledger, n)
            write_tsv(ledger.trials(), cfg.metric.name, state / "results.tsv")
    finally:
        ledger.close()
    if cfg.report.html:
        from nightlab.report import write_report

        write_report(cfg, tag)
    where = f"; branch nightlab/{tag} is at {rec.commit_sha[:7]}" if accepted else ""
    console.print(f"trial {n}: {rec.status}{escape(where)}", markup=True)


def register(app: typer.Typer) -> None:
    app.command("accept")(accept)
    app.command("reject")(reject)
