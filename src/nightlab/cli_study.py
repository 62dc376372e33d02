"""`nightlab study`: compare search settings (study.py runs the sessions, report/study.py sums them up)."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer
from rich.markup import escape

from nightlab.cli_common import ConfigOpt, console, load_config
from nightlab.taglock import tag_lock


def say(line: str) -> None:
    """A study's progress line (a function of this module, so that sessions in their own processes print alike)."""
    console.print(f"[dim]{escape(line)}[/]")


def study(arm: Annotated[list[str], typer.Option("--arm", help="NAME or 'NAME: section.key=value, ...' (repeat; "
                                                  "the first arm is the one the others are compared with).")],
          compute: Annotated[float, typer.Option(help="Seconds of runs per session, the baseline's included.",
                                                 min=1)],
          config_path: ConfigOpt = None,
          name: Annotated[str, typer.Option(help="The study's name (rerun with it to resume).")] = "study",
          sessions: Annotated[int, typer.Option(help="Sessions per arm (agent seeds + 0..R-1).", min=1)] = 5,
          max_trials: Annotated[int | None, typer.Option(help="Also stop a session after this many trials.",
                                                         min=1)] = None,
          seeds: Annotated[int, typer.Option(help="Fresh seeds to verify each session's best.", min=2)] = 3,
          parallel: Annotated[int, typer.Option(help="Sessions at once, each in its own process (on a local "
                                                     "executor with GPUs, each on GPUs of its own).", min=1)] = 1,
          ) -> None:
    """Compare search settings: R sessions per arm under one compute budget, each best verified on fresh seeds
    (and on the selection split, [data] select, when there is one)."""
    from nightlab import project
    from nightlab import study as studies
    from nightlab.report import study as study_report

    cfg = load_config(config_path)
    if cfg.run.prepare and not project.prepared(cfg):
        created = project.prepare(cfg)
        console.print(f"prepared; created: {', '.join(created) or 'nothing new'}", markup=False)
    arms = [studies.parse_arm(a) for a in arm]
    s = studies.Study(cfg, name, arms, sessions, compute, max_trials, seeds, say)
    with tag_lock(s.dir):
        outcomes = s.run(parallel)
    summaries = study_report.summarize([a.name for a in arms], outcomes)
    console.print(study_report.table(summaries, cfg.metric.name))
    console.print(study_report.verdict(summaries), markup=False)
    command = "nightlab study " + " ".join(f"--arm {shlex.quote(a)}" for a in arm) + \
        f" --compute {compute:g} --sessions {sessions} --seeds {seeds} --name {name}" + \
        (f" --max-trials {max_trials}" if max_trials else "") + (f" --parallel {parallel}" if parallel > 1 else "")
    (s.dir / "study.html").write_text(study_report.write_html(name, cfg.metric.name, summaries, outcomes, command))
    console.print(f"results: {s.dir / 'study.json'}, {s.dir / 'study.html'}", markup=False)
