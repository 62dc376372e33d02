"""`nightlab status` and `nightlab log` answered without the full CLI (entry.py): the config as checked_config.py
reads it, the data of status_data.py (the same as the full CLI's, so `--json` is the same text), and tables drawn
by plain_table.py instead of rich. Nothing here imports typer, pydantic or rich (tests/test_quick_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

from nightlab import checked_config, plain_table, tags
from nightlab.ledger import Ledger, TrialRecord
from nightlab.plain_table import Column, Style
from nightlab.status_data import (
    SLOT_COLUMNS,
    SLOT_RIGHT,
    STYLE,
    evidence,
    log_json,
    queued,
    slot_cells,
    slots_of,
    status_json,
    status_object,
    summary_rows,
    trial_cells,
)


class Unanswered(Exception):
    """What only the full CLI shows (the verify table of `status`): entry.py hands the command to it."""


def answer(command: str, config_path: Path | None, tag: str | None, as_json: bool) -> str:
    """The text `nightlab <command>` prints: command is "status" or "log"."""
    cfg = checked_config.load(config_path)
    tag = tags.check_tag(tag) if tag else tags.latest_tag(cfg.root)
    ledger = Ledger(tags.ledger_path(cfg.root, tag))
    try:
        if command == "log":
            trials = ledger.trials()
            return json.dumps(log_json(trials)) if as_json else \
                trials_table(trials, cfg.metric.name, plain_table.terminal_style())
        state = cfg.root / tags.STATE / tag
        if as_json:
            return json.dumps(status_object(cfg, tag, ledger, state))
        return _status_text(cfg, tag, ledger, state)
    finally:
        ledger.close()


def _status_text(cfg: checked_config.Checked, tag: str, ledger: Ledger, state: Path) -> str:
    if ledger.latest_verify():
        raise Unanswered("the verify table")
    style = plain_table.terminal_style()
    trials = ledger.trials()
    summary = status_json(cfg, tag, trials, ledger.get("noise"), f"nightlab/{tag}", evidence(ledger))
    parts = [plain_table.pairs(list(summary_rows(summary)), style),
             trials_table(trials[-10:], cfg.metric.name, style, "last 10 trials")]
    if slots := slots_of(ledger, queue=queued(state)):
        columns = [Column(c, right=c in SLOT_RIGHT, shrink=c in ("now", "hardware")) for c in SLOT_COLUMNS]
        parts.append(plain_table.table(columns, [slot_cells(s) for s in slots], style, "slots", title_left=True))
    return "\n".join(parts)


def trials_table(trials: list[TrialRecord], metric_name: str, style: Style, title: str = "") -> str:
    """The trials table of views.trials_table, with the same cells: the metric, phase and description give way."""
    columns = [Column("n", right=True), Column("status"), Column(metric_name, right=True, shrink=True),
               Column("delta", right=True), Column("phase", shrink=True, max_width=20), Column("s", right=True),
               Column("description", shrink=True)]
    rows = [trial_cells(t) for t in trials]
    styles = [["", STYLE.get(row[1], ""), "", "", "", "", ""] for row in rows] if style.color else None
    return plain_table.table(columns, rows, style, title, cell_styles=styles)
