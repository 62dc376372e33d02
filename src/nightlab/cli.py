"""The command-line interface: the only place that configures logging and the console."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.text import Text

from nightlab import __version__, cli_review, cli_study, cli_views
from nightlab.cli_common import ConfigOpt, TagOpt, console, err, existing, load_config, tag_of
from nightlab.errors import NightlabError, UsageError
from nightlab.taglock import tag_lock

if TYPE_CHECKING:
    from nightlab.config import Config
    from nightlab.ledger import TrialRecord
    from nightlab.types import Event
    from nightlab.verify import Options as VerifyOptions

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="nightlab: an agent edits train.py, nightlab trains it in a sandbox, keeps real improvements.")


def _version(value: bool) -> None:
    if value:
        console.print(f"nightlab {__version__}")
        raise typer.Exit()


class _Stderr(logging.StreamHandler):
    """Writes to sys.stderr as it is at each record: the live view swaps it to print log lines above its panel."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    handler = _Stderr(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font-cache INFO lines are noise here
    for name in ("httpx", "httpx2"):  # the API agents' SDKs' HTTP clients: one INFO line per request
        logging.getLogger(name).setLevel(logging.WARNING)


# -- init / prepare ---------------------------------------------------------------------------
@app.command()
def init(directory: Annotated[Path, typer.Argument(help="Project directory (default: here).")] = Path("."),
         example: Annotated[str | None, typer.Option(help="Copy a bundled example into DIR.")] = None,
         editable: Annotated[list[str] | None, typer.Option(help="A file the agent may edit (repeatable).")] = None,
         metric: Annotated[str, typer.Option(help="Primary metric name.")] = "val_bpb",
         goal: Annotated[str, typer.Option(help="minimize or maximize.")] = "minimize",
         command: Annotated[str, typer.Option(help="Training command.")] = "python train.py",
         budget: Annotated[float, typer.Option(help="Training budget in seconds.", min=1)] = 300) -> None:
    """Write a commented nightlab.toml for a repo, or copy a bundled example (--example) into DIR."""
    from nightlab import project

    if example:
        project.copy_example(example, directory)
        console.print(f"example [bold]{example}[/] is ready in {directory} (a git repo with one commit)\n"
                      f"next: cd {directory} && nightlab prepare && nightlab run --max-trials 10")
        return
    if goal not in ("minimize", "maximize"):
        raise UsageError(f"--goal: must be minimize or maximize, not {goal!r}")
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such directory")
    files = editable or ["train.py"]
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise UsageError(f"--editable: {', '.join(missing)} not found in {directory}")
    path = project.write_config(directory, files, metric, goal, command, budget)
    console.print(f"wrote {path}; review it, commit it, then: nightlab run --max-trials 20")


@app.command()
def prepare(config_path: ConfigOpt = None) -> None:
    """Run the one-time [run] prepare step (data, tokenizer) in the project directory."""
    _prepare(load_config(config_path))


def _prepare(cfg: Config) -> None:
    from nightlab import project

    created = project.prepare(cfg)
    console.print(f"prepared; created: {', '.join(created) or 'nothing new'}", markup=False)


# -- run ----------------------------------------------------------------------------------------
@app.command()
def run(config_path: ConfigOpt = None, tag: TagOpt = None,
        agent: Annotated[str | None, typer.Option(help="Agent name (config: agent.name).")] = None,
        max_trials: Annotated[int | None, typer.Option(help="Stop after this many trials (after the baseline).",
                                                       min=0)] = None,
        hours: Annotated[float | None, typer.Option(help="Stop after this many hours.", min=0)] = None,
        budget: Annotated[float | None, typer.Option(help="Training budget in seconds (config: run.budget_s).")] = None,
        sandbox: Annotated[str | None, typer.Option(help="Sandbox backend (config: sandbox.backend).")] = None,
        slots: Annotated[int | None, typer.Option(help="Trials in flight at once (config: executor.slots).",
                                                  min=1)] = None,
        executor: Annotated[str | None, typer.Option(help="local, ray, slurm or ssh (config: executor.name).")] = None,
        pipeline: Annotated[bool | None, typer.Option("--pipeline/--no-pipeline",
                            help="The agent prepares the next trial while the slots train "
                                 "(config: executor.pipeline).")] = None,
        ) -> None:
    """Run the research loop; rerun with the same --tag to resume where it stopped."""
    from nightlab import config, project, views

    cfg = load_config(config_path)
    for key, value, flag in (("agent.name", agent, "--agent"), ("run.budget_s", budget, "--budget"),
                             ("sandbox.backend", sandbox, "--sandbox"), ("executor.slots", slots, "--slots"),
                             ("executor.name", executor, "--executor"), ("executor.pipeline", pipeline, "--pipeline")):
        if value is not None:
            config.override(cfg, key, value, flag)
    tag = tag_of(cfg, tag)
    if cfg.run.prepare and not project.prepared(cfg):
        console.print(f"first run in this project: running the one-time prepare step `{cfg.run.prepare}` "
                      "(`nightlab prepare` runs it again)", markup=False)
        _prepare(cfg)
    reason = _session(cfg, tag, max_trials, hours)
    console.print(f"stopped: {reason}", markup=False)
    console.print(views.where(cfg, tag), markup=False, soft_wrap=True)  # a path stays whole, to copy


def _session(cfg: Config, tag: str, max_trials: int | None, hours: float | None) -> str:
    """Run the loop for a tag under its lock with the live view and report, then show the status table."""
    from nightlab import project
    from nightlab.report import watch
    from nightlab.session import run_session

    with tag_lock(project.state_dir(cfg, tag)), watch(cfg, tag, console, _print_event, max_trials, hours) as notify:
        try:
            reason = run_session(cfg, tag, max_trials, hours, notify)
        except KeyboardInterrupt:
            err.print(f"interrupted: the ledger is consistent; resume with `nightlab run --tag {tag}`", markup=False)
            raise typer.Exit(130) from None
    cli_views.show_status(cfg, tag)
    return reason


def _print_event(event: Event, rec: TrialRecord) -> None:
    from nightlab import views
    from nightlab.types import Event

    if event == Event.PROPOSE:
        _say(f"[dim]trial {rec.n}: asking the agent…[/]")
    elif event == Event.RUN:
        _say(f"[dim]trial {rec.n}: running{escape(': ' + rec.description) if rec.description else ''}[/]")
    elif event == Event.CONFIRM:
        _say(f"[dim]trial {rec.n}: promising ({rec.runs[-1]:.6g}); confirming with a fresh seed[/]")
    elif event == Event.LOST:
        _say(f"[dim]trial {rec.n}: a run was lost (the infrastructure stopped it); running it again[/]")
    elif event == Event.REBASE:
        _say(f"[dim]trial {rec.n}: the best moved on; {escape(rec.reason)}, running it again[/]")
    elif event == Event.DONE:
        style = views.STYLE.get(rec.status, "")
        metric = views.fmt(rec.metric) + (f" ({views.fmt(rec.delta, True)})" if rec.delta is not None else "")
        why = f" [{rec.reason}]" if rec.reason else ""
        _say(f"trial {rec.n:>3}  [{style}]{rec.status:<8}[/]  {metric:<24} {escape(rec.description + why)}")
        if rec.n == 0 and "no noise measured" in rec.reason:
            # on a terminal through the console the live panel draws on, so it lands above the panel, not in it
            (console if console.is_terminal else err).print(f"[yellow]warning:[/] {escape(rec.reason)}")


def _say(markup: str) -> None:
    """`console.print(markup)`. Piped or logged (no colours), the same line is written without rich's rendering,
    which costs four times as much: a few lines a trial are a visible share of a sub-second trial's overhead."""
    if console.is_terminal or console.color_system is not None:
        console.print(markup)
        return
    text = Text.from_markup(markup)
    text.expand_tabs()
    console.file.write(text.plain + "\n")
    console.file.flush()


# -- trial ------------------------------------------------------------------------------------
@app.command()
def trial(config_path: ConfigOpt = None,
          record: Annotated[bool, typer.Option("--record",
                                               help="Keep the run's outputs under .nightlab/manual/.")] = False,
          sandbox: Annotated[str | None, typer.Option(help="Sandbox backend.")] = None,
          budget: Annotated[float | None,
                            typer.Option(help="Training budget in seconds (config: run.budget_s).")] = None,
          ) -> None:
    """Run the current working tree once, like the seed's run.sh, and print its metrics."""
    from nightlab import config, project

    cfg = load_config(config_path)
    for key, value, flag in (("sandbox.backend", sandbox, "--sandbox"), ("run.budget_s", budget, "--budget")):
        if value is not None:
            config.override(cfg, key, value, flag)
    from nightlab.session import run_once

    keep_dir = project.state_dir(cfg, "manual") if record else None
    with tempfile.TemporaryDirectory(prefix="nightlab-trial-") as tmp:
        values, problem, seconds, run_dir, examples = run_once(cfg, keep_dir or Path(tmp))
        kept = run_dir if record else "not kept (--record keeps them)"
        console.print(f"{'failed' if problem else 'ok'} after {seconds:.1f}s  ·  outputs: {kept}")
        for name, value in values.items():
            console.print(f"  {name}: {value:.6g}{' ←' if name == cfg.metric.name else ''}")
        if examples is not None:
            from nightlab.per_example import standard_error

            weighted = " (weighted)" if examples.weights is not None else ""
            console.print(f"  per-example values{weighted}: {len(examples)}, their mean matches; evaluation σ "
                          f"{standard_error(examples):.4g} (the keep rule pairs them)")
        elif not problem:
            console.print("  [dim]no per-example values: the keep rule cannot see evaluation noise "
                          "(README: The keep rule)[/]")
        if problem:  # the run's own last words usually say why
            from nightlab.metrics import log_tail

            tail = log_tail(run_dir / "run.log", lines=5)
            err.print("\n".join(f"  | {line}" for line in tail.splitlines()), markup=False, highlight=False)
    if problem:
        err.print(f"error: {problem}", markup=False)
        raise typer.Exit(1)


# -- status / log (cli_views.py) -------------------------------------------------------------------
app.command()(cli_views.status)
app.command("log")(cli_views.log_cmd)


# -- verify -------------------------------------------------------------------------------------
@app.command("verify")
def verify_cmd(config_path: ConfigOpt = None, tag: TagOpt = None,
               seeds: Annotated[int, typer.Option(help="Fresh seeds per measurement.", min=2, max=1000)] = 5,
               ablate: Annotated[bool, typer.Option("--ablate",
                                                    help="Take each kept change out of the best in turn.")] = False,
               test: Annotated[bool, typer.Option("--test",
                                                  help="Evaluate baseline and best on the test split.")] = False,
               final: Annotated[bool, typer.Option(
                   "--final", help="With --test: retrain on train+val first (NIGHTLAB_FINAL=1).")] = False,
               select: Annotated[bool, typer.Option(
                   "--select", help="Re-rank the kept states on the selection split ([data] select); "
                                    "with --test, on test too.")] = False) -> None:
    """Re-run the best and the baseline on fresh seeds: effect, 95% CI, p-value; --ablate, --test, --final, --select."""
    cfg = load_config(config_path)
    if select and not cfg.data.select:
        raise UsageError(f"{cfg.path}: --select needs [data] select (a split no trial and no agent sees)")
    if final and not test:
        raise UsageError("--final retrains on train+val for the test evaluation; use it with --test")
    if test and not cfg.data.test:
        raise UsageError(f"{cfg.path}: --test needs [data] test (the held-out paths)")
    tag = tag_of(cfg, tag)
    from nightlab import verify

    _verify(cfg, tag, verify.Options(seeds, ablate, test, final, select))


def _verify(cfg: Config, tag: str, opts: VerifyOptions) -> None:
    """Run `nightlab verify` for a tag under its lock and print its tables."""
    from nightlab import project, verify

    ledger = existing(cfg, tag)
    with tag_lock(project.state_dir(cfg, tag)):
        v = verify.Verifier(cfg, tag, ledger, opts, lambda what: console.print(f"[dim]verify {escape(what)}[/]"))
        try:
            v.run()
        except KeyboardInterrupt:
            err.print(f"interrupted: the worktree is back at the best commit of {tag!r}; nothing was recorded",
                      markup=False)
            raise typer.Exit(130) from None
    rows = ledger.latest_verify() or []
    console.print(verify.table([r for r in rows if not r["kind"].startswith("select")], cfg.metric.name,
                               f"nightlab verify #{v.number} ({tag})"))
    console.print(f"effect = how much better the second column is (positive = better); seeds "
                  f"{v.seeds[0]}..{v.seeds[-1]}; runs: {project.state_dir(cfg, tag)}/verify/{v.number}/")
    if v.opts.select:
        console.print(verify.rerank_table(rows, ledger.trials(), cfg))
        console.print(verify.rerank_summary(rows, v.best.n, tag))


# -- study (cli_study.py) -----------------------------------------------------------------------
app.command()(cli_study.study)


# -- report (cli_views.py) -----------------------------------------------------------------------
app.command("report")(cli_views.report_cmd)


# -- doctor -----------------------------------------------------------------------------------
@app.command()
def doctor(config_path: ConfigOpt = None) -> None:
    """What works on this machine: sandboxes (and why not the others), limits, GPUs, agent CLIs, extras; in a
    project whose executor is slurm, also the cluster (a tiny probe job)."""
    from nightlab.doctor import checks

    try:
        cfg = load_config(config_path)
    except UsageError:
        if config_path is not None:
            raise
        cfg = None  # outside a project: this machine only
    section = ""
    for c in checks(cfg):
        if c.section != section:
            section = c.section
            console.print(f"[bold]{section}[/]")
        mark = "[green]ok[/]  " if c.ok else "[yellow]no[/]  "
        console.print(f"  {mark}{c.name:<13} {escape(c.text)}")


# -- demo -------------------------------------------------------------------------------------
@app.command()
def demo(directory: Annotated[Path | None, typer.Option("--dir", help="Where to put the demo project.")] = None,
         trials: Annotated[int, typer.Option(help="Trials after the baseline.", min=1)] = 8) -> None:
    """Run a short session on the bundled quickstart example with the offline optuna agent."""
    from nightlab import config, project

    dest = directory or Path(tempfile.mkdtemp(prefix="nightlab-demo-"))
    project.copy_example("quickstart", dest)
    console.print(f"[bold]nightlab demo[/] in {dest}: the quickstart example (digits MLP), optuna agent, "
                  f"{trials} trials")
    cfg = config.load(dest / config.CONFIG_NAME)
    project.prepare(cfg)
    reason = _session(cfg, "demo", trials, None)
    state = project.state_dir(cfg, "demo")
    console.print(f"stopped: {reason}")
    if cfg.data.select and any(t.status == "keep" for t in existing(cfg, "demo").trials()):
        from nightlab import verify
        from nightlab.report import write_report

        console.print("\n[bold]did the search fit the validation split?[/] every kept state re-scored on the "
                      "selection split (never seen by a trial) and on test, one fresh seed each")
        _verify(cfg, "demo", verify.Options(seeds=1, test=bool(cfg.data.test), select=True))
        write_report(cfg, "demo")  # with the re-ranking
    console.print("\n[bold]where everything is[/]\n"
                  f"  project:  {dest}\n  ledger:   {state}/ledger.sqlite  (results.tsv beside it)\n"
                  f"  runs:     {state}/runs/<n>/  (run.log, metrics.json, diff.patch, brief.md)\n"
                  f"  branch:   nightlab/demo  (git -C {dest} log --oneline nightlab/demo)\n"
                  f"  report:   {state}/report.html  (progress.png beside it)\n"
                  f"  more:     cd {dest} && nightlab status && nightlab log")


# -- accept / reject (cli_review.py) -------------------------------------------------------------------
cli_review.register(app)


def main() -> None:
    """Entry point: usage and config errors are one line and exit 2; other known failures exit 1."""
    command = typer.main.get_command(app)
    try:
        code = command.main(standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except typer.TyperException as e:  # bad flags and arguments
        ctx = getattr(e, "ctx", None)
        where = f"{ctx.command_path}: " if ctx else ""
        err.print(f"error: {where}{e.format_message()}", markup=False)
        code = getattr(e, "exit_code", 2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted", markup=False)
        code = 130
    except UsageError as e:
        err.print(f"error: {e}", markup=False)
        code = 2
    except NightlabError as e:
        err.print(f"error: {e}", markup=False)
        code = 1
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
