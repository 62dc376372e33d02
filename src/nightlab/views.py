"""What a tag shows outside its ledger: the rich tables of `status` and `log` (their data and cells are in
status_data.py), results.tsv, and the commit message of each trial."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from nightlab import project
from nightlab.audit import summary
from nightlab.config import Config
from nightlab.ledger import TrialRecord
from nightlab.status_data import (
    SLOT_COLUMNS,
    SLOT_RIGHT,
    TRIAL_COLUMNS,
    slot_cells,
    summary_rows,
    trial_cells,
)

# the data of status and log, re-exported: callers read them as views.X
from nightlab.status_data import STYLE as STYLE
from nightlab.status_data import evidence as evidence
from nightlab.status_data import fmt as fmt
from nightlab.status_data import queued as queued
from nightlab.status_data import slot_activity as slot_activity
from nightlab.status_data import slots_of as slots_of
from nightlab.status_data import status_json as status_json


def _cut(text: str) -> Text:
    """One line in its cell, cut with an ellipsis where the column is narrower."""
    return Text(text, no_wrap=True, overflow="ellipsis")


def trials_table(trials: list[TrialRecord], metric_name: str, title: str = "") -> Table:
    """Fits the console it is printed on: no column has a minimum width rich would have to honour past the
    border, and the text columns (metric, phase, description) are the ones that give way, cut in their cells."""
    table = Table(title=title or None, show_lines=False, header_style="bold")
    options: list[dict[str, Any]] = [{"justify": "right", "no_wrap": True}, {"no_wrap": True}, {"justify": "right"},
                                     {"justify": "right", "no_wrap": True}, {"max_width": 20},
                                     {"justify": "right", "no_wrap": True}, {}]
    for col, kw in zip(TRIAL_COLUMNS, options):
        table.add_column(_cut(col or metric_name), **kw)
    for t in trials:
        n, status, metric, delta, phase, seconds, text = trial_cells(t)
        table.add_row(n, Text(status, style=STYLE.get(status, "")), _cut(metric), delta, _cut(phase), seconds,
                      _cut(text))
    return table


def summary_table(s: dict) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, text, style in summary_rows(s):
        table.add_row(key, Text(text, style=style))
    return table


def slots_table(slots: list[dict]) -> Table:
    table = Table(title="slots", title_justify="left")
    for col in SLOT_COLUMNS:
        table.add_column(col, justify="right" if col in SLOT_RIGHT else "left")
    for s in slots:
        table.add_row(*(Text(cell) for cell in slot_cells(s)))
    return table


def shown(path: Path) -> str:
    """A path relative to the current directory when it is under it (nightlab runs from the project)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def where(cfg: Config, tag: str) -> str:
    """Where a run's results are, one a line, as the user can type them from here (short enough to fit)."""
    state = project.state_dir(cfg, tag)
    lines = [f"results: {shown(state / 'results.tsv')}", f"runs:    {shown(state / 'runs')}/",
             f"branch:  nightlab/{tag}"]
    if cfg.report.html:
        lines.append(f"report:  {shown(state / 'report.html')}")
    if cfg.report.mlflow:
        from nightlab.report.mlflow import opened_with

        lines.append(f"mlflow:  {opened_with(cfg, tag, shown)}")
    return "\n".join(lines)


TSV_EXTRAS = ["n", "delta", "phase", "seconds", "cost_usd", "runs", "reason", "hardware", "agent_seconds", "agent",
              "audit", "findings"]


def write_tsv(trials: list[TrialRecord], metric_name: str, path: Path) -> None:
    """Karpathy's five columns first (commit, metric, memory_gb, status, description), then extras."""
    Tsv(path, metric_name, trials).write()


class Tsv:
    """results.tsv kept up to date trial by trial: each trial's line is made once, when it is recorded, so a
    night's thousandth trial costs what its first did (no ledger read; a trial recorded after every other is one
    line appended, anything else the file written out again, to a temporary file renamed over it).

    A line is appended only to the file exactly as this object left it (same file, same size: anything else,
    a user's edit included, is written out again); a resume writes the whole file again from the ledger
    (Loop.recover), whatever a kill left."""

    def __init__(self, path: Path, metric_name: str, trials: list[TrialRecord]) -> None:
        self.path = path
        self.head = "\t".join(["commit", metric_name, "memory_gb", "status", "description", *TSV_EXTRAS])
        self.lines = {t.n: _tsv_line(t) for t in trials}
        self.left: tuple[int, int] | None = None  # (inode, size) of the file as this object last left it

    def update(self, rec: TrialRecord) -> None:
        last = rec.n > max(self.lines, default=-1)
        self.lines[rec.n] = _tsv_line(rec)
        if not (last and self._append(self.lines[rec.n] + "\n")):
            self.write()

    def _append(self, line: str) -> bool:
        """Whether `line` went to the end of the file as this object left it."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            data = line.encode()
            if (st.st_ino, st.st_size) != self.left or os.write(fd, data) != len(data):
                return False
            self.left = (st.st_ino, st.st_size + len(data))
            return True
        finally:
            os.close(fd)

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        data = ("\n".join([self.head, *(self.lines[n] for n in sorted(self.lines))]) + "\n").encode()
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        self.left = (os.stat(self.path).st_ino, len(data))


def _tsv_line(t: TrialRecord) -> str:
    mem = t.metrics.get("peak_memory_gb", t.metrics.get("memory_gb"))
    cells = [t.commit_sha[:7], _num(t.metric), _num(mem), t.status, t.description,
             str(t.n), _num(t.delta), t.phase, f"{t.seconds:.1f}", f"{t.cost_usd:.4f}",
             ",".join(_num(r) for r in t.runs), t.reason, t.hardware or "", f"{t.agent_seconds:.1f}", t.agent,
             t.audit, summary(t.findings)]
    return "\t".join(c.replace("\t", " ").replace("\n", " ") for c in cells)


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def commit_message(rec: TrialRecord, best: TrialRecord, noise: float | None, metric_name: str) -> str:
    """A finished trial's commit message: its result against the best before it, and how it ended, so that
    `git log` of the branch tells the story even without the ledger (users and tests read this format)."""
    pm = f" ± {noise:.5g}" if noise else ""
    value = f"{rec.metric:.5f}{pm}" if rec.metric is not None else "—"
    lines = [f"trial {rec.n}: {rec.description}", "", f"{metric_name}: {value} (best {best.metric:.5f}{pm})"]
    if rec.delta is not None:
        lines.append(f"delta: {rec.delta:+.5f}")
    lines.append(f"status: {rec.status}" + (f" ({rec.reason})" if rec.reason else ""))
    if rec.phase:
        lines.append(f"phase: {rec.phase}")
    if rec.findings:
        lines.append(f"audit: {rec.audit} ({summary(rec.findings)})")
    return "\n".join(lines)
