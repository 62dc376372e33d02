"""The live view of `nightlab run`: a rich Live panel on a terminal, plain greppable lines elsewhere.

On a terminal each finished trial is still printed as one line above the panel, so the scrollback
keeps the night's history; the panel shows what is happening now: the current trial and phase,
progress over the run's budget and the current training run's, the best so far, the last outcomes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from nightlab import project, views
from nightlab.config import Config
from nightlab.ledger import Ledger, TrialRecord
from nightlab.types import Event, Status

if TYPE_CHECKING:
    from rich.live import Live

LAST = 12  # outcomes shown in the panel
DOING = {Event.PROPOSE: "asking the agent", Event.RUN: "running", Event.CONFIRM: "confirming with a fresh seed",
         Event.LOST: "running again (a run was lost)", Event.REBASE: "running again on the new best"}
TIMED = (Event.RUN, Event.CONFIRM, Event.LOST, Event.REBASE)  # events that start a run


class LiveView:
    """A `notify(event, rec)` callback; use it as a context manager around the run."""

    def __init__(self, cfg: Config, tag: str, console: Console, plain: Callable[[Event, TrialRecord], None],
                 max_trials: int | None = None, hours: float | None = None) -> None:
        self.cfg, self.tag, self.console, self.plain = cfg, tag, console, plain
        self.max_trials, self.hours = max_trials, hours
        self.terminal = console.is_terminal
        self.trials = _finished(cfg, tag)
        self.flying: dict[int, tuple[TrialRecord, str, float | None]] = {}  # n → (record, doing, run started)
        self.started = time.monotonic()
        self.live: Live | None = None

    def __enter__(self) -> LiveView:
        if self.terminal:
            from rich.live import Live

            self.live = live = Live(self, console=self.console, refresh_per_second=4, transient=True)
            # drawn once now, before any other thread prints: rich moves the cursor back over the panel only
            # once it knows its size, so a line printed before the first draw would be glued to its edge
            live.start(refresh=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def __call__(self, event: Event, rec: TrialRecord) -> None:
        if not self.terminal:
            self.plain(event, rec)
            return
        if event == Event.DONE:
            self.trials.append(rec)
            self.flying.pop(rec.n, None)
            self.plain(event, rec)  # printed above the panel: the history stays in the scrollback
            return
        started = time.monotonic() if event in TIMED else self.flying.get(rec.n, (rec, "", None))[2]
        self.flying[rec.n] = (rec, DOING.get(event, event), started)

    # -- drawing ---------------------------------------------------------------------------------
    def __rich__(self) -> Panel:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        grid.add_row("now", self._now())
        for label, done, total, text in self._bars():
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=total, completed=min(done, total), width=40), text)
            grid.add_row(label, bar)
        grid.add_row("best", self._best())
        grid.add_row("last", self._last())
        return Panel(grid, title=f"nightlab run · {escape(self.tag)}", title_align="left", border_style="cyan")

    def _now(self) -> Text:
        if not self.flying:
            return Text("between trials", style="dim")
        text = Text()
        for n, (rec, doing, started) in sorted(self.flying.items()):
            text.append(f"{chr(10) if text else ''}trial {n}: {doing}")
            if rec.description:
                text.append(f" · {rec.description}", style="italic")
            if len(self.flying) > 1 and started is not None:  # one run has its own bar below
                text.append(f" · {time.monotonic() - started:.0f}s", style="dim")
            elif rec.phase:
                text.append(f"  (phase {rec.phase})", style="dim")
        return text

    def _bars(self) -> list[tuple[str, float, float, str]]:
        bars: list[tuple[str, float, float, str]] = []
        done = self.trials[-1].n if self.trials else 0
        if self.max_trials is not None:
            bars.append(("trials", done, max(self.max_trials, 1), f"{done}/{self.max_trials}"))
        elapsed = time.monotonic() - self.started
        if self.hours:
            bars.append(("time", elapsed, self.hours * 3600, f"{elapsed / 3600:.2f}/{self.hours:g} h"))
        if self.max_trials is None and not self.hours:
            bars.append(("time", 0, 1, f"{elapsed / 60:.1f} min, no limit (Ctrl-C stops; resume any time)"))
        timed = [started for _, _, started in self.flying.values() if started is not None]
        if len(self.flying) == 1 and timed:
            run = time.monotonic() - timed[0]
            budget = self.cfg.run.budget_s
            bars.append(("run", run, budget, f"{run:.0f}/{budget:g} s" + (" (over budget)" if run > budget else "")))
        return bars

    def _best(self) -> Text:
        scored = [t for t in self.trials if t.status in (Status.BASELINE, Status.KEEP) and t.metric is not None]
        if not scored:
            return Text("—", style="dim")
        base, best = scored[0], scored[-1]
        text = Text(f"{self.cfg.metric.name} {views.fmt(best.metric)}", style="bold green")
        if best.n != base.n and base.metric and best.metric is not None:
            pct = 100 * (best.metric - base.metric) / abs(base.metric)
            text.append(f"  trial {best.n}, baseline {views.fmt(base.metric)} ({pct:+.1f}%)", style="")
        else:
            text.append("  (the baseline)", style="dim")
        kept = sum(t.status == Status.KEEP for t in self.trials)
        text.append(f"  · {kept} kept of {max(len(self.trials) - 1, 0)}", style="dim")
        return text

    def _last(self) -> Text:
        text = Text()
        for t in self.trials[-LAST:]:
            text.append(f"{t.n}:", style="dim")
            text.append(t.status, style=views.STYLE.get(t.status, ""))
            text.append(" ")
        return text or Text("—", style="dim")


def _finished(cfg: Config, tag: str) -> list[TrialRecord]:
    """The trials a resumed tag already has, so the panel's best and history start where the ledger is."""
    path = project.state_dir(cfg, tag) / "ledger.sqlite"
    if not path.exists():
        return []
    ledger = Ledger(path)
    try:
        return [t for t in ledger.trials() if t.status != Status.RUNNING]
    finally:
        ledger.close()
