"""The ratchet: propose → run → decide → record, until a limit is reached.

One trial's life is in trial.py; where trials wait and run (slots, worktrees, the agent's threads) is in
scheduler.py. This driver starts the baseline, asks the agent for trials while there is room and no limit is
reached, and hands each trial what finished. With one slot it is the seed's sequential loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nightlab import crashpoint, frontier
from nightlab.agents import Agent, capable, describe
from nightlab.baseline import Baseline
from nightlab.config import Config
from nightlab.executors import Executor
from nightlab.lab import Lab
from nightlab.ledger import Ledger, TrialRecord
from nightlab.scheduler import Proposed, Ran, Scheduler
from nightlab.trial import Next, Trial
from nightlab.types import Event, Status
from nightlab.workspace import Workspace


@dataclass
class Limits:
    max_trials: int | None = None  # counts trials after the baseline, over the whole tag
    hours: float | None = None  # wall-clock hours for this invocation
    compute_s: float | None = None  # seconds of runs over the whole tag, the baseline's included (`nightlab study`)


class Loop:
    def __init__(self, cfg: Config, ws: Workspace, ledger: Ledger, agent: Agent, executor: Executor,
                 state_dir: Path, notify: Callable[[Event, TrialRecord], None] = lambda event, rec: None,
                 pipeline: bool = False) -> None:
        self.lab = Lab(cfg, ws, ledger, agent, state_dir, notify)
        self.scheduler = Scheduler(executor, ws, pipeline, serial=not capable(agent, "concurrent"))
        self.failures = 0  # proposals rejected in a row
        self.stop: str | None = None
        self.redo: list[int] = []  # proposals cut short below a trial that was committed: made again under their n

    def run(self, limits: Limits) -> str:
        """Run trials until a limit; returns why it stopped. Ctrl-C propagates after the ledger is consistent."""
        start, lab, scheduler = time.monotonic(), self.lab, self.scheduler
        lab.session = int(lab.ledger.get("sessions", 0)) + 1
        lab.ledger.set_meta(sessions=lab.session)
        try:
            self.recover()
            if lab.ledger.trial(0) is None:
                scheduler.add(Baseline(lab))
            while True:
                scheduler.dispatch()  # first: a free slot should not wait for the agent's setup
                if 0 not in scheduler.trials:  # every trial is judged against a finished baseline
                    self._propose_more(limits, start)
                scheduler.dispatch()
                if not scheduler.trials:
                    return self.stop or "nothing left to run"
                for ended in scheduler.wait():
                    scheduler.settle(ended.trial, self._next(ended))
        finally:
            scheduler.abandon()

    def _next(self, ended: Proposed | Ran) -> Next:
        if isinstance(ended, Ran):
            return ended.trial.ran(ended.k, ended.outcome)
        step = ended.trial.proposed(ended.error)
        if step is Next.DROP:
            self.stop = f"the agent has no more ideas ({ended.trial.rec.reason})"
        else:
            self.failures = self.failures + 1 if step is Next.RECORD else 0
        return step

    def _propose_more(self, limits: Limits, start: float) -> None:
        while self.stop is None and self.scheduler.room():
            self.stop = self._limit(limits, start)
            if self.stop is None:
                self._propose()

    def _propose(self) -> None:
        """A new trial from the best (or a near-miss: [search] policy), in a worktree of its own; the agent's turn
        may run in another thread."""
        last = self.lab.ledger.last()
        assert last is not None, "the baseline is recorded first"
        n = self.redo.pop(0) if self.redo else last.n + 1
        rec = TrialRecord(n=n, parent=self._start().commit_sha, seed=1000 * n,
                          agent=describe(self.lab.agent, self.lab.cfg))
        trial = Trial(self.lab, rec, self.scheduler.worktree())
        self.scheduler.propose(trial, trial.brief())

    def _start(self) -> TrialRecord:
        """The state a new trial starts from: the best, or under the frontier policy a near-miss tied with it."""
        cfg = self.lab.cfg
        if cfg.search.policy == "frontier":  # reads every trial: a policy that weighs them all
            trials = self.lab.ledger.trials()
            return frontier.choose(trials, cfg.primary, self.lab.noise(), cfg.keep.sigmas) or self.lab.best()
        return self.lab.best()

    def _limit(self, limits: Limits, start: float) -> str | None:
        cfg, ledger = self.lab.cfg, self.lab.ledger
        last = ledger.last()
        if limits.max_trials is not None and last is not None and last.n - len(self.redo) >= limits.max_trials:
            return f"reached --max-trials {limits.max_trials}"
        if limits.hours is not None and time.monotonic() - start >= limits.hours * 3600:
            return f"reached --hours {limits.hours:g}"
        if limits.compute_s is not None and ledger.total("seconds") >= limits.compute_s:
            return f"reached the compute budget of {limits.compute_s:g} s of runs"
        if cfg.agent.max_cost_usd and ledger.total("cost_usd") >= cfg.agent.max_cost_usd:
            return f"reached max_cost_usd {cfg.agent.max_cost_usd:g}"
        if self.failures >= cfg.agent.max_failures:
            return f"the agent failed {self.failures} times in a row (last: {ledger.last_reason(Status.REJECTED)})"
        return None

    def recover(self) -> None:
        """Resume after a crash: trials in flight are run again (counted once); unfinished proposals are redone."""
        lab = self.lab
        lab.ledger.interrupt_runs()
        done = [t for t in lab.ledger.trials() if t.status != Status.RUNNING]
        # A kill between the ledger save and observe() kept that outcome from the agent (observe is idempotent);
        # so did a tag started with another agent, for the baseline.
        for rec in {t.n: t for t in done[:1] + done[-1:]}.values():
            lab.agent.observe(rec.n, Status(rec.status), rec.metric)
        for rec in lab.ledger.trials():
            if rec.status != Status.RUNNING:
                continue
            if rec.n == 0 or not rec.commit_sha:  # started again from scratch, proposal and all
                lab.drop(rec.n)
                self.redo += [rec.n] if rec.n else []
                continue
            lab.forget_runs(rec.n)  # its brief, transcript and diff stay: the proposal is not made again
            lab.ledger.forget_examples(rec.n)
            rec.start_over()
            rec.seconds = 0.0
            self.scheduler.add(Trial(lab, rec, pending=1))
        top = lab.ledger.last()  # a number past it is given again anyway
        self.redo = [n for n in self.redo if top is not None and n < top.n]
        best = lab.ledger.best()
        if best:
            lab.ws.reset(best.commit_sha)
        # A kill between a trial's ledger save and this view left the view behind (a stopped run rewrites it last)
        lab.tabulate()
        crashpoint.reached("recovered")
