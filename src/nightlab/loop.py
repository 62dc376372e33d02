"""The ratchet: propose → verify → commit → run → decide → record, until a limit is reached."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from nightlab import metrics, program, project
from nightlab.agents import Agent
from nightlab.config import Config
from nightlab.decide import Verdict, decide, noise
from nightlab.errors import AgentExhausted, AgentFailed, EditRejected, RunCrashed, TrialFailed, TrialInvalid
from nightlab.integrity import clear, data_fingerprints
from nightlab.ledger import RUNNING, Ledger, TrialRecord, write_tsv
from nightlab.sandbox import Sandbox, passthrough
from nightlab.sandbox.options import spec_fields
from nightlab.types import RunResult, RunSpec, Status
from nightlab.workspace import Workspace, changed, checksums


@dataclass
class Limits:
    max_trials: int | None = None  # counts trials after the baseline, over the whole tag
    hours: float | None = None  # wall-clock hours for this invocation


class Loop:
    def __init__(self, cfg: Config, ws: Workspace, ledger: Ledger, agent: Agent, sandbox: Sandbox,
                 state_dir: Path, notify: Callable[[str, TrialRecord], None] = lambda event, rec: None) -> None:
        self.cfg, self.ws, self.ledger, self.agent, self.sandbox = cfg, ws, ledger, agent, sandbox
        self.state_dir, self.notify = state_dir, notify
        self.env = passthrough(cfg.run.env, str(cfg.path))
        self.failures = 0

    # -- the loop --------------------------------------------------------------------------
    def run(self, limits: Limits) -> str:
        """Run trials until a limit; returns why it stopped. Ctrl-C propagates after the ledger is consistent."""
        start = time.monotonic()
        self.recover()
        if self.baseline_record() is None:
            self.baseline()
        while True:
            trials = self.ledger.trials()
            if limits.max_trials is not None and trials[-1].n >= limits.max_trials:
                return f"reached --max-trials {limits.max_trials}"
            if limits.hours is not None and time.monotonic() - start >= limits.hours * 3600:
                return f"reached --hours {limits.hours:g}"
            if self.cfg.agent.max_cost_usd and sum(t.cost_usd for t in trials) >= self.cfg.agent.max_cost_usd:
                return f"reached max_cost_usd {self.cfg.agent.max_cost_usd:g}"
            if self.failures >= self.cfg.agent.max_failures:
                return f"the agent failed {self.failures} times in a row (last: {trials[-1].reason})"
            try:
                self.trial(trials[-1].n + 1)
            except AgentExhausted as e:
                return f"the agent has no more ideas ({e})"

    def trial(self, n: int, rec: TrialRecord | None = None) -> TrialRecord:
        """One trial; `rec` is a committed trial being re-run after a resume."""
        rec = rec or self._propose(n)
        if rec.status == RUNNING:
            try:
                self.evaluate(rec)
            except TrialFailed as e:
                rec.status, rec.reason = e.status, str(e)
        self.finish(rec)
        return rec

    def _propose(self, n: int) -> TrialRecord:
        best = self.best()
        trials = self.ledger.trials()
        rec = TrialRecord(n=n, parent=best.commit_sha, seed=1000 * n)
        self.ws.reset(best.commit_sha)
        program.ensure_scratchpad(self.ws.dir, self.cfg.project.scratchpad)
        brief = program.brief(self.cfg, n, trials, best.metric, self.noise(), self._scratchpad(), self._failure_tail(trials))
        rec.phase = brief.phase
        self.ledger.save(rec)
        self.notify("propose", rec)
        out = self.run_dir(n)
        (out / "brief.md").write_text(brief.text)
        try:
            proposal = self.agent.propose(self.ws.dir, brief)
            (out / "agent.log").write_text(proposal.transcript)
            first = (proposal.description.strip().splitlines() or ["(no description)"])[0]
            rec.description, rec.hypothesis = first[:400], proposal.hypothesis
            rec.cost_usd, rec.tokens_in, rec.tokens_out = proposal.cost_usd, proposal.tokens_in, proposal.tokens_out
            (out / "diff.patch").write_text(self.ws.diff())
            files = self.ws.verify_edits()
        except (AgentFailed, EditRejected) as e:
            if spent := getattr(e, "proposal", None):  # a failed attempt still costs tokens
                (out / "agent.log").write_text(spent.transcript)
                rec.cost_usd, rec.tokens_in, rec.tokens_out = spent.cost_usd, spent.tokens_in, spent.tokens_out
            self.failures += 1
            rec.status, rec.reason = Status.REJECTED, str(e)
            return rec
        except AgentExhausted:
            self.ledger.delete(n)
            shutil.rmtree(out, ignore_errors=True)
            self.ws.reset(best.commit_sha)
            raise
        self.failures = 0
        rec.commit_sha = self.ws.commit(f"trial {n}: {rec.description}\n\nstatus: running", files)
        self.ledger.save(rec)
        return rec

    # -- running and deciding ----------------------------------------------------------------
    def evaluate(self, rec: TrialRecord) -> None:
        best = self.best()
        self.notify("run", rec)
        self._run(rec, 0)
        while True:
            d = decide(self.cfg.primary, rec.runs, best.metric, self.noise(), self.cfg.keep, len(best.runs) or None)
            if d.verdict != Verdict.CONFIRM:
                break
            self.notify("confirm", rec)
            self._run(rec, len(rec.runs))
        rec.metric, rec.delta = d.value, d.value - best.metric
        rec.status = Status.KEEP if d.verdict == Verdict.KEEP else Status.DISCARD

    def _run(self, rec: TrialRecord, k: int) -> None:
        """One run of the trial's commit; its metrics are folded into `rec` (means over runs)."""
        spec = RunSpec(command=self.cfg.run.command, cwd=self.ws.dir, run_dir=self.run_dir(rec.n, k),
                       budget_s=self.cfg.run.budget_s, timeout_s=self.cfg.run.timeout_s, seed=rec.seed + k,
                       trial=rec.n, env=self.env, grace_s=self.cfg.run.grace_s, **spec_fields(self.cfg, self.ws.dir))
        seconds: list[float] = []
        try:
            values = measure(self.cfg, self.sandbox, spec, seconds)
        finally:
            rec.seconds += sum(seconds)
        rec.runs.append(values[self.cfg.metric.name])
        rec.metrics = {name: (rec.metrics.get(name, v) * k + v) / (k + 1) for name, v in values.items()}

    def baseline(self) -> None:
        first = program.current_phase(program.read_program(self.cfg)[1], [], self.cfg)
        rec = TrialRecord(n=0, description="baseline", commit_sha=self.ws.head(), seed=0,
                          phase=first.label if first else "")
        self.ws.reset(rec.commit_sha)
        self.ledger.save(rec)
        self.notify("run", rec)
        try:
            for k in range(self.cfg.keep.noise_runs):
                self._run(rec, k)
        except TrialFailed as e:
            self.ledger.delete(0)
            raise RunCrashed(f"the baseline failed ({e}); fix it before searching (see {self.run_dir(0)}/run.log)") from None
        rec.metric = sum(rec.runs) / len(rec.runs)
        rec.status = Status.BASELINE
        self.ledger.set_meta(noise=noise(rec.runs))
        self.finish(rec)

    # -- recording --------------------------------------------------------------------------------
    def finish(self, rec: TrialRecord) -> None:
        rec.finished = time.time()
        if rec.commit_sha and rec.n > 0:
            rec.commit_sha = self.ws.amend(self.message(rec))
            self.ws.mark(rec.n, rec.commit_sha)
        elif rec.n == 0:
            self.ws.mark(0, rec.commit_sha)
        if rec.status != Status.KEEP:
            self.ws.reset(self.best().commit_sha if rec.n > 0 else rec.commit_sha)
        self.ledger.save(rec)
        write_tsv(self.ledger.trials(), self.cfg.metric.name, self.state_dir / "results.tsv")
        self.agent.observe(rec.n, Status(rec.status), rec.metric)
        self.notify("done", rec)

    def message(self, rec: TrialRecord) -> str:
        best = self.best()
        pm = f" ± {self.noise():.5g}" if self.noise() else ""
        value = f"{rec.metric:.5f}{pm}" if rec.metric is not None else "—"
        lines = [f"trial {rec.n}: {rec.description}", "",
                 f"{self.cfg.metric.name}: {value} (best {best.metric:.5f}{pm})"]
        if rec.delta is not None:
            lines.append(f"delta: {rec.delta:+.5f}")
        lines.append(f"status: {rec.status}" + (f" ({rec.reason})" if rec.reason else ""))
        if rec.phase:
            lines.append(f"phase: {rec.phase}")
        return "\n".join(lines)

    # -- state -----------------------------------------------------------------------------------
    def recover(self) -> None:
        """Resume after a crash: a trial in flight is run again (counted once); an unfinished proposal is redone."""
        done = [t for t in self.ledger.trials() if t.status != RUNNING]
        # A kill between the ledger save and observe() kept that outcome from the agent (observe is idempotent);
        # so did a tag started with another agent, for the baseline.
        for rec in {t.n: t for t in done[:1] + done[-1:]}.values():
            self.agent.observe(rec.n, Status(rec.status), rec.metric)
        for rec in self.ledger.trials():
            if rec.status != RUNNING:
                continue
            if rec.n == 0 or not rec.commit_sha:
                self.ledger.delete(rec.n)
                continue
            self.ws.reset(rec.commit_sha)
            shutil.rmtree(self.run_dir(rec.n), ignore_errors=True)
            rec.runs, rec.metrics, rec.seconds = [], {}, 0.0
            self.trial(rec.n, rec)
        best = self.best_or_none()
        if best:
            self.ws.reset(best.commit_sha)

    def baseline_record(self) -> TrialRecord | None:
        return self.ledger.trial(0)

    def best_or_none(self) -> TrialRecord | None:
        done = [t for t in self.ledger.trials() if t.status in (Status.BASELINE, Status.KEEP)]
        return done[-1] if done else None  # every keep beats the best before it

    def best(self) -> TrialRecord:
        best = self.best_or_none()
        assert best is not None, "no baseline"
        return best

    def noise(self) -> float | None:
        return self.ledger.get("noise")

    def run_dir(self, n: int, k: int = 0) -> Path:
        path = self.state_dir / "runs" / str(n) / (f"repeat-{k}" if k else "")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _scratchpad(self) -> str:
        path = self.ws.dir / self.cfg.project.scratchpad
        return path.read_text(errors="replace") if path.is_file() else ""

    def _failure_tail(self, trials: list[TrialRecord]) -> str:
        last = trials[-1] if trials else None
        if last and last.status in (Status.CRASH, Status.TIMEOUT):
            return metrics.log_tail(self.run_dir(last.n) / "run.log")
        return ""


def measure(cfg: Config, sandbox: Sandbox, spec: RunSpec, seconds: list[float],
            data: list[str] | None = None) -> dict[str, float]:
    """Run `spec` (and the trusted evaluator, if configured); return its metrics or raise how it failed.

    `seconds` collects each run's duration, so time is accounted even when the trial fails. `data`: the
    data paths to fingerprint around the run (default: what trials see).
    """
    data = project.visible_data(cfg) if data is None else data
    before, data_before = checksums(spec.cwd, cfg.project.protected), data_fingerprints(spec.cwd, data)
    result = _logged_run(sandbox, spec)
    seconds.append(result.seconds)
    measured = spec
    if cfg.metric.evaluate:
        metrics.read_exit(result)  # training only writes artifacts; what it printed or wrote does not count
        measured = _evaluator_spec(cfg, spec)
        result = _logged_run(sandbox, measured)
        seconds.append(result.seconds)
    if bad := changed(before, checksums(spec.cwd, cfg.project.protected)):
        raise TrialInvalid(f"protected file changed during the run: {', '.join(bad)}")
    if bad := changed(data_before, data_fingerprints(spec.cwd, data)):
        raise TrialInvalid(f"data changed during the run: {', '.join(bad)}")
    values = metrics.read(result, measured.run_dir, cfg.metric.name, stdout=not cfg.metric.evaluate)
    if measured is not spec or not (spec.run_dir / "metrics.json").is_file():
        _write_json(spec.run_dir / "metrics.json", values)  # the run directory records what counted
    metrics.check_constraints(values, cfg.metric.constraints)
    return values


def _evaluator_spec(cfg: Config, train: RunSpec) -> RunSpec:
    """The trusted evaluator: a fresh run with a directory of its own; the training outputs are read-only to it."""
    eval_dir = train.run_dir / "evaluate"
    clear(eval_dir)  # whatever training left under that name
    eval_dir.mkdir()
    return replace(train, command=cfg.metric.evaluate, run_dir=eval_dir, log_name="evaluate.log",
                   readonly=[*train.readonly, train.run_dir],
                   env={**train.env, "NIGHTLAB_TRAIN_DIR": str(train.run_dir)})


def _logged_run(sandbox: Sandbox, spec: RunSpec) -> RunResult:
    result = sandbox.run(spec)
    name = "sandbox.json" if spec.log_name == "run.log" else f"sandbox-{Path(spec.log_name).stem}.json"
    _write_json(spec.run_dir / name, {"backend": sandbox.name, "command": spec.command, "cwd": str(spec.cwd),
                                      "seed": spec.seed, "seconds": result.seconds, "exit_code": result.exit_code,
                                      "exit_reason": result.reason, **result.details})
    return result


def _write_json(path: Path, data: object) -> None:
    clear(path)  # never write through a link a run planted in its run directory
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
