"""The CLI's read-only commands: `status`, `log` and `report`. They import only what they show, so that they
answer fast even on a long night's ledger (benchmarks/startup.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from nightlab.cli_common import ConfigOpt, JsonOpt, TagOpt, console, existing, load_config, log, tag_of

if TYPE_CHECKING:
    from nightlab.config import Config


def status(config_path: ConfigOpt = None, tag: TagOpt = None, as_json: JsonOpt = False) -> None:
    """Where a run stands: trials, kept, best, delta vs baseline, the last 10 trials."""
    from nightlab import project
    from nightlab.status_data import status_object

    cfg = load_config(config_path)
    tag = tag_of(cfg, tag)
    if as_json:
        print(json.dumps(status_object(cfg, tag, existing(cfg, tag), project.state_dir(cfg, tag))))
        return
    show_status(cfg, tag)


def show_status(cfg: Config, tag: str) -> None:
    from nightlab import project, views

    ledger = existing(cfg, tag)
    trials = ledger.trials()
    console.print(views.summary_table(views.status_json(cfg, tag, trials, ledger.get("noise"), f"nightlab/{tag}",
                                                         views.evidence(ledger))))
    console.print(views.trials_table(trials[-10:], cfg.metric.name, "last 10 trials"))
    if slots := views.slots_of(ledger, queue=views.queued(project.state_dir(cfg, tag))):
        console.print(views.slots_table(slots))
    if rows := ledger.latest_verify():
        from nightlab import verify

        console.print(verify.table(rows, cfg.metric.name, "last verify (nightlab verify)"))


def log_cmd(config_path: ConfigOpt = None, tag: TagOpt = None, as_json: JsonOpt = False) -> None:
    """Every trial of a run, in order."""
    cfg = load_config(config_path)
    trials = existing(cfg, tag_of(cfg, tag)).trials()
    if as_json:
        from nightlab.status_data import log_json

        print(json.dumps(log_json(trials)))
    else:
        from nightlab import views

        console.print(views.trials_table(trials, cfg.metric.name))


def report_cmd(config_path: ConfigOpt = None, tag: TagOpt = None) -> None:
    """Write .nightlab/<tag>/report.html (self-contained: open it in any browser) and progress.png."""
    from nightlab import views
    from nightlab.report import write_report

    cfg = load_config(config_path)
    tag = tag_of(cfg, tag)
    existing(cfg, tag).close()
    path, note = write_report(cfg, tag)
    if note:
        log.warning("the report has no progress chart: %s", note)
    chart = "" if note else f"\nchart:  {views.shown(path.parent / 'progress.png')}"
    console.print(f"report: {views.shown(path)}{chart}", markup=False, soft_wrap=True)
