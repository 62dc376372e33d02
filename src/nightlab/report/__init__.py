"""Reports: progress.png, a self-contained report.html, regenerated while `nightlab run` goes on."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from nightlab import crashpoint, project
from nightlab.config import Config
from nightlab.errors import UsageError
from nightlab.ledger import TrialRecord
from nightlab.report import data as report_data
from nightlab.report import html
from nightlab.types import Event

if TYPE_CHECKING:
    from nightlab.report.worker import ReportProcess

log = logging.getLogger("nightlab.report")
Notify = Callable[[Event, TrialRecord], None]
# At most one rewrite per REFRESH_S while a run goes on (a real trial takes minutes, so each still gets its
# own); the last state is always written when the run stops. Sub-second trials would otherwise spend more
# time drawing charts than training. A report that takes long to draw (it grows with the trials) waits longer, so
# that drawing takes at most 1/(1 + SPACING) of a core, whatever the night's length.
REFRESH_S = 3.0
SPACING = 5


def write_atomic(path: Path, content: bytes) -> None:
    """Readers (a browser refreshing the report mid-run) see the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the report from anyone but the harness's user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(cfg: Config, tag: str) -> tuple[Path, str]:
    """Write report.html, progress.png and progress-dark.png; returns the report's path and a note
    saying why the chart is missing ('' when it is there)."""
    from nightlab.report import chart

    state = project.state_dir(cfg, tag)
    data = report_data.load(cfg, tag)
    light = dark = None
    note = ""
    try:
        light, dark = chart.png(data), chart.png(data, dark=True)
    except UsageError as e:  # matplotlib missing: the report is still worth having
        note = str(e)
    if light is not None and dark is not None:
        write_atomic(state / "progress.png", light)
        write_atomic(state / "progress-dark.png", dark)
    path = state / "report.html"
    write_atomic(path, html.render(data, light, dark, note).encode())
    return path, note


class Regenerator:
    """A `notify` wrapper: after each finished trial, the report (drawn in a process of its own, worker.py) and
    MLflow, when enabled, are updated from a background thread, so the loop never waits for matplotlib. Report
    requests that pile up collapse into one; `close()` writes the last one (and logs every trial to MLflow) before
    the run returns."""

    def __init__(self, cfg: Config, tag: str, notify: Notify) -> None:
        self.cfg, self.tag, self.inner = cfg, tag, notify
        self.pending: list[TrialRecord] = []
        self.dirty = False
        self.warned: set[str] = set()
        self.cond = threading.Condition()
        self.closing = False
        self.next_write = 0.0
        self.thread = threading.Thread(target=self._work, name="nightlab-report", daemon=True)
        self.drawer: ReportProcess | None = None
        if cfg.report.html:
            from nightlab.report.worker import ReportProcess

            self.drawer = ReportProcess(cfg, tag)
        self.mlflow = None
        if cfg.report.mlflow:
            from nightlab.report.mlflow import MlflowLogger

            self.mlflow = MlflowLogger(cfg, tag)  # fails here, before the run, when the extra is missing
            self.pending = self.mlflow.backlog()  # logged first, on the thread: the ledger's trials it lacks
        self.thread.start()

    def __call__(self, event: Event, rec: TrialRecord) -> None:
        self.inner(event, rec)
        if event == Event.DONE:
            with self.cond:
                self.pending.append(rec)
                self.dirty = self.cfg.report.html
                self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join()
        if self.drawer is not None:
            self.drawer.close()

    def _due(self) -> float:
        """Seconds until the report may be rewritten (0: now)."""
        return max(0.0, self.next_write - time.monotonic())

    def _work(self) -> None:
        while True:
            with self.cond:
                while not (self.pending or self.closing or (self.dirty and not self._due())):
                    self.cond.wait(self._due() if self.dirty else None)
                batch, self.pending = self.pending, []
                regenerate = self.dirty and (self.closing or not self._due())
                self.dirty = self.dirty and not regenerate
                if self.closing and not batch and not regenerate:
                    return
            for rec in batch:
                if self.mlflow is not None:
                    self._safely("mlflow", partial(self.mlflow.log, rec))
            if regenerate:
                started = time.monotonic()
                self._safely("report", self._write)
                now = time.monotonic()
                self.next_write = now + max(REFRESH_S, SPACING * (now - started))

    def _write(self) -> None:
        note = self.drawer.write() if self.drawer is not None else write_report(self.cfg, self.tag)[1]
        crashpoint.reached("report.written")
        if note:
            self._warn("chart", f"the report has no progress chart: {note}")

    def _safely(self, what: str, action: Callable[[], object]) -> None:
        """A report is never worth a failed run: problems are logged once and the loop goes on."""
        try:
            action()
        except Exception as e:  # noqa: BLE001 - any failure here must stay out of the loop
            self._warn(what, f"could not update the {what}: {type(e).__name__}: {e}")

    def _warn(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message)


@contextmanager
def watch(cfg: Config, tag: str, console, plain: Notify, max_trials: int | None,
          hours: float | None) -> Iterator[Notify]:
    """The `notify` for a run: the live view (or plain lines) plus report regeneration."""
    from nightlab.report.live import LiveView

    with LiveView(cfg, tag, console, plain, max_trials, hours) as view:
        regen = Regenerator(cfg, tag, view)
        try:
            yield regen
        finally:
            regen.close()
