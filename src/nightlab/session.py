"""Wiring: builds the workspace, ledger, agent and sandbox for a tag and runs the loop (or one trial)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from nightlab import crashpoint, metrics, project
from nightlab.agents import Agent, check, load_agent
from nightlab.config import Config
from nightlab.errors import TrialFailed, UsageError
from nightlab.executors import Executor, load_executor
from nightlab.ledger import Ledger, TrialRecord
from nightlab.loop import Limits, Loop
from nightlab.measure import measure
from nightlab.per_example import Examples
from nightlab.review import check_inspector
from nightlab.runspec import run_spec
from nightlab.sandbox import load_sandbox, passthrough
from nightlab.sandbox.limits import sweep_stale
from nightlab.types import Event
from nightlab.workspace import Workspace, git, ignore_state_dir


def identity(cfg: Config) -> dict[str, object]:
    """What a tag may not change between resumes (a new budget would make every trial beat the old baseline)."""
    return {"metric": cfg.metric.name, "goal": cfg.metric.goal, "editable": sorted(cfg.project.editable),
            "budget_s": cfg.run.budget_s}


def run_session(cfg: Config, tag: str, max_trials: int | None, hours: float | None,
                notify: Callable[[Event, TrialRecord], None]) -> str:
    """One `nightlab run`; `[executor]` (with the CLI's overrides applied) says where and how many at once."""
    state = project.state_dir(cfg, tag)
    fresh = not (state / "ledger.sqlite").exists()
    passthrough(cfg.run.env, str(cfg.path))  # refuse bad settings before anything is created
    sweep_stale()
    program = cfg.root / cfg.project.program
    if "program" in cfg.project.model_fields_set and not program.is_file():  # named, so not optional: a typo
        raise UsageError(f"{cfg.path}: project.program: {program} not found")
    agent = load_agent(cfg.agent.name, cfg, state)
    check(agent)  # an endpoint that cannot work fails here, before the baseline and before anything is recorded
    check_inspector(cfg, state)
    ex = cfg.executor
    options: dict[str, object] = {"state": state} if ex.name == "slurm" else {}  # its job files live there
    if ex.name == "local" and ex.slots == 1 and not ex.pipeline:
        options["inline"] = True
    executor = load_executor(ex.name, cfg, cfg.sandbox.backend, ex.slots, **options)
    try:
        return _run(cfg, tag, state, fresh, agent, executor, Limits(max_trials=max_trials, hours=hours), notify)
    finally:
        executor.shutdown()


def _run(cfg: Config, tag: str, state: Path, fresh: bool, agent: Agent, executor: Executor, limits: Limits,
         notify: Callable[[Event, TrialRecord], None]) -> str:
    ws = Workspace(cfg.root, tag, list(cfg.project.editable), cfg.project.scratchpad)
    ws.open(fresh=fresh, best="" if fresh else _best_commit(state))
    ws.link_data(project.visible_data(cfg))
    ledger = Ledger(state / "ledger.sqlite")
    crashpoint.reached("start.ledger")
    try:
        if not fresh and not ledger.trials():
            # The baseline failed (it left no record), so nothing is lost by starting over from what the user
            # has committed since (the fix its failure asked for), with the settings as they are now.
            ws.restart()
            ledger.set_meta(identity=identity(cfg))
        ledger.check_identity(identity(cfg), str(cfg.path))
        if fresh or ledger.get("tag") is None:  # a first start killed just after creating the ledger has none
            ledger.set_meta(tag=tag, branch=ws.branch, started=time.time())
        ws.started()
        ledger.set_meta(slots=executor.slots, executor=executor.name, pipeline=cfg.executor.pipeline)
        loop = Loop(cfg, ws, ledger, agent, executor, state, notify, pipeline=cfg.executor.pipeline)
        return loop.run(limits)
    finally:
        ledger.close()


def _best_commit(state: Path) -> str:
    ledger = Ledger(state / "ledger.sqlite")
    try:
        best = ledger.best()
    finally:
        ledger.close()
    return best.commit_sha if best else ""


def run_once(cfg: Config, out: Path) -> tuple[dict[str, float], str, float, Path, Examples | None]:
    """Run the working tree as it is (no commit, no ledger): its metrics, any problem, seconds, run dir and the
    primary metric's per-example values."""
    out.mkdir(parents=True, exist_ok=True)
    if out.is_relative_to(cfg.root):
        ignore_state_dir(cfg.root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = out / stamp if out.name == "manual" else out
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "diff.patch").write_text(git("diff", "HEAD", "--", ".", cwd=cfg.root, check=False))
    spec = run_spec(cfg, cfg.root, run_dir, seed=0, trial=0)
    seconds: list[float] = []
    try:
        measured = measure(cfg, load_sandbox(cfg.sandbox.backend), spec, seconds)
        return measured.values, "", sum(seconds), run_dir, measured.examples
    except TrialFailed as e:
        evaluated = run_dir / "evaluate" / "evaluate.log"
        log = evaluated if evaluated.exists() else run_dir / "run.log"
        return metrics.from_log(log), f"{e.status}: {e}", sum(seconds), run_dir, None
