"""The ratchet: propose → verify → commit → run → decide → record, until a limit is reached.

With one slot the steps follow one another, as in the seed. With K slots, up to K trials are in flight
(K+1 with `pipeline`: the agent prepares the next trial while the slots train): each proposal starts
from the best in a worktree of its own, its runs go to the executor, and it is decided against the
best at the moment its runs finish. The rule for a trial whose parent is no longer the best: when it
is about to run, or would be kept, its change is re-applied to the current best (rebased) and run
again from scratch, at most MAX_REBASES times; a change that no longer applies is discarded.
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from nightlab import metrics, per_example, program
from nightlab.agents import Agent, capable, describe, reply
from nightlab.config import Config
from nightlab.decide import Verdict, decide, deterministic, distinct, evidence_note, noise
from nightlab.errors import AgentExhausted, AgentFailed, EditRejected, RunCrashed
from nightlab.executors import Executor, Job
from nightlab.flight import Flight, Worktrees, in_thread, job_for, raise_in
from nightlab.ledger import Ledger, TrialRecord, commit_message, write_tsv
from nightlab.types import Brief, Event, Proposal, RunEnd, RunOutcome, Status
from nightlab.workspace import Workspace

MAX_REBASES = 2
LOST_RETRIES = 1  # a run the infrastructure lost is run once more before the trial counts as lost
PROPOSAL_FILES = ("brief.md", "agent.log", "diff.patch")  # in runs/<n>/ beside run 0's own files


@dataclass
class Limits:
    max_trials: int | None = None  # counts trials after the baseline, over the whole tag
    hours: float | None = None  # wall-clock hours for this invocation


class Loop:
    def __init__(self, cfg: Config, ws: Workspace, ledger: Ledger, agent: Agent, executor: Executor,
                 state_dir: Path, notify: Callable[[Event, TrialRecord], None] = lambda event, rec: None,
                 pipeline: bool = False) -> None:
        self.cfg, self.ws, self.ledger, self.agent, self.executor = cfg, ws, ledger, agent, executor
        self.state_dir, self.notify = state_dir, notify
        self.capacity = executor.slots + int(pipeline)
        self.inline = self.capacity == 1  # propose in this thread: Ctrl-C reaches the agent directly
        self.agent_lock = None if capable(agent, "concurrent") else threading.Lock()
        self.flights: dict[int, Flight] = {}
        self.ready: deque[Flight] = deque()  # flights with runs to start, in order
        self.jobs: dict[Future, tuple[Flight, Job, int]] = {}
        self.free_slots = list(range(executor.slots))
        self.worktrees = Worktrees(ws, self.capacity)
        self.seen_jobs: set[str] = set()
        self.failures = 0
        self.stop: str | None = None
        self.example_cache: dict[int, per_example.Examples | None] = {}

    # -- the loop --------------------------------------------------------------------------
    def run(self, limits: Limits) -> str:
        """Run trials until a limit; returns why it stopped. Ctrl-C propagates after the ledger is consistent."""
        start = time.monotonic()
        self.session = int(self.ledger.get("sessions", 0)) + 1  # job ids stay unique across resumes
        self.ledger.set_meta(sessions=self.session)
        try:
            self.recover()
            if self.ledger.trial(0) is None:
                self._start_baseline()
            while True:
                self._dispatch()  # first: a slot waiting for a ready trial should not wait for the agent's setup
                if 0 not in self.flights:
                    self._propose_more(limits, start)
                self._dispatch()
                if not self.flights:
                    return self.stop or "nothing left to run"
                self._wait()
        finally:
            self._abandon()

    def _propose_more(self, limits: Limits, start: float) -> None:
        while self.stop is None and len(self.flights) < self.capacity and self.worktrees.available():
            self.stop = self._limit(limits, start)
            if self.stop is None:
                self._start_proposal()

    def _limit(self, limits: Limits, start: float) -> str | None:
        trials = self.ledger.trials()
        if limits.max_trials is not None and trials[-1].n >= limits.max_trials:
            return f"reached --max-trials {limits.max_trials}"
        if limits.hours is not None and time.monotonic() - start >= limits.hours * 3600:
            return f"reached --hours {limits.hours:g}"
        if self.cfg.agent.max_cost_usd and sum(t.cost_usd for t in trials) >= self.cfg.agent.max_cost_usd:
            return f"reached max_cost_usd {self.cfg.agent.max_cost_usd:g}"
        if self.failures >= self.cfg.agent.max_failures:
            last = next(t.reason for t in reversed(trials) if t.status == Status.REJECTED)
            return f"the agent failed {self.failures} times in a row (last: {last})"
        return None

    def _wait(self) -> None:
        proposals = {f.proposal: f for f in self.flights.values() if f.proposal is not None}
        if not self.jobs and not proposals:
            raise RuntimeError(f"nothing in flight but trials waiting: {sorted(self.flights)}")
        done: set[Future] = set()
        while not done:  # short waits keep Ctrl-C prompt
            done, _ = wait([*self.jobs, *proposals], timeout=1.0, return_when=FIRST_COMPLETED)
        for fut in done:
            if fut in proposals:
                self._proposed(proposals[fut], fut)
            else:
                flight, job, k = self.jobs.pop(fut)
                self._ran(flight, job, k, fut.result())

    # -- proposing --------------------------------------------------------------------------
    def _start_proposal(self) -> None:
        best = self.best()
        trials = self.ledger.trials()
        n = trials[-1].n + 1
        ws = self.worktrees.take()
        assert ws is not None, "proposals start only while a worktree is available"
        rec = TrialRecord(n=n, parent=best.commit_sha, seed=1000 * n, agent=describe(self.agent, self.cfg))
        ws.reset(best.commit_sha)
        program.ensure_scratchpad(ws.dir, self.cfg.project.scratchpad)
        brief = program.brief(self.cfg, n, trials, best.metric, self.noise(), self._scratchpad(ws),
                              self._failure_tail(trials), self.ledger.get("eval_se"), ws.dir, reply(self.agent))
        rec.phase = brief.phase
        self.ledger.save(rec)
        self.notify(Event.PROPOSE, rec)
        (self.run_dir(n) / "brief.md").write_text(brief.text)
        flight = self.flights[n] = Flight(rec, ws)
        if self.inline:
            fut: Future = Future()
            try:
                self._make(flight, brief)
                fut.set_result(None)
            except (AgentFailed, EditRejected, AgentExhausted) as e:
                fut.set_exception(e)
            self._proposed(flight, fut)
        else:
            flight.proposal = in_thread(self._make, flight, brief)

    def _make(self, flight: Flight, brief: Brief) -> None:
        """The agent's turn (in a thread of its own unless inline): edit, verify, commit. No ledger writes here."""
        rec, ws, out = flight.rec, flight.tree, self.run_dir(flight.rec.n)
        proposal = self._ask(ws, brief, rec)
        (out / "agent.log").write_text(proposal.transcript)
        first = (proposal.description.strip().splitlines() or ["(no description)"])[0]
        rec.description, rec.hypothesis = first[:400], proposal.hypothesis
        rec.cost_usd, rec.tokens_in, rec.tokens_out = proposal.cost_usd, proposal.tokens_in, proposal.tokens_out
        (out / "diff.patch").write_text(ws.diff())
        files = ws.verify_edits()
        rec.commit_sha = ws.commit(f"trial {rec.n}: {rec.description}\n\nstatus: running", files)

    def _ask(self, ws: Workspace, brief: Brief, rec: TrialRecord | None = None) -> Proposal:
        """The agent's proposal; the seconds it took (failed or not) are added to `rec`'s agent_seconds."""
        with self.agent_lock or nullcontext():
            start = time.monotonic()
            try:
                return self.agent.propose(ws.dir, brief)
            finally:
                if rec is not None:
                    rec.agent_seconds += time.monotonic() - start

    def _proposed(self, flight: Flight, fut: Future) -> None:
        flight.proposal = None
        rec = flight.rec
        try:
            fut.result()
        except (AgentFailed, EditRejected) as e:
            if spent := getattr(e, "proposal", None):  # a failed attempt still costs tokens
                (self.run_dir(rec.n) / "agent.log").write_text(spent.transcript)
                rec.cost_usd, rec.tokens_in, rec.tokens_out = spent.cost_usd, spent.tokens_in, spent.tokens_out
            self.failures += 1
            rec.status, rec.reason = Status.REJECTED, str(e)
            self.finish(flight)
            return
        except AgentExhausted as e:
            self.ledger.delete(rec.n)
            shutil.rmtree(self.run_dir(rec.n), ignore_errors=True)
            if flight.ws is self.ws:
                self.ws.reset(rec.parent)
            self._release(flight)
            self.stop = f"the agent has no more ideas ({e})"
            return
        self.failures = 0
        self.ledger.save(rec)
        flight.pending = 1
        self.ready.append(flight)

    # -- running ----------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Start runs on free slots, the oldest trials first."""
        for flight in list(self.ready):
            while (flight.pending or flight.retry) and self.free_slots and flight.rec.n in self.flights:
                if flight.ws is None:
                    flight.ws = self.worktrees.take()
                    if flight.ws is None:
                        break  # a resumed trial waiting for a worktree
                if flight.running == 0 and not flight.rec.runs and not self._on_best(flight):
                    break
                self._submit(flight)
            if not (flight.pending or flight.retry) or flight.rec.n not in self.flights:
                self.ready.remove(flight)

    def _on_best(self, flight: Flight) -> bool:
        """Before its first run: put the trial on the current best (False when it was discarded instead)."""
        rec, best = flight.rec, self.ledger.best()
        if rec.n == 0 or best is None:
            return True
        if flight.tree.head() != rec.commit_sha:  # resumed, or its worktree was reused
            flight.tree.reset(rec.commit_sha)
        if rec.parent == best.commit_sha or self._rebase(flight):
            return True
        self.finish(flight)
        return False

    def _submit(self, flight: Flight) -> None:
        rec = flight.rec
        if flight.retry:
            k = flight.retry.pop(0)
        else:
            k, flight.next_k, flight.pending = flight.next_k, flight.next_k + 1, flight.pending - 1
        attempt = flight.lost.get(k, 0)
        slot = self.free_slots.pop(0)
        run_dir = self.run_dir(rec.n, k)
        if attempt:  # what the lost attempt left (run 0 shares its directory with the proposal and later runs)
            for entry in run_dir.iterdir():
                if not (k == 0 and (entry.name in PROPOSAL_FILES or entry.name.startswith("repeat-"))):
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        job = job_for(self.cfg, flight, run_dir, k, slot, job_id=f"{rec.n}.{k}a{attempt}s{self.session}")
        self.ledger.run_started(job.id, rec.n, k, attempt, slot)
        if not rec.runs and flight.running == 0 and not attempt:
            self.notify(Event.RUN, rec)
        flight.running += 1
        self.jobs[self.executor.submit(job)] = (flight, job, k)

    def _ran(self, flight: Flight, job: Job, k: int, out: RunOutcome) -> None:
        if out.job in self.seen_jobs:  # an executor may answer twice for one job: the first answer counts
            return
        self.seen_jobs.add(out.job)
        self.free_slots.append(job.slot)
        flight.running -= 1
        rec, name = flight.rec, self.cfg.metric.name
        self.ledger.run_finished(out.job, out.status or RunEnd.OK, out.values.get(name), out.seconds, out.reason,
                                 out.hardware, out.host)
        rec.seconds += out.seconds
        if out.hardware and out.hardware not in rec.hardware.split("; "):
            rec.hardware = "; ".join(filter(None, [rec.hardware, out.hardware]))
        if out.status == Status.LOST:
            flight.lost[k] = flight.lost.get(k, 0) + 1
            if flight.lost[k] <= LOST_RETRIES:
                self.notify(Event.LOST, rec)
                flight.retry.append(k)
                self._requeue(flight)
                return
        if out.status is None and (why := self._unpaired(flight, out)):
            out.status, out.reason = Status.INVALID, why
        if out.status is not None:
            self._failed(flight, out)
            return
        done = len(rec.runs)  # the running mean of every metric over the trial's runs
        rec.metrics = {m: (rec.metrics.get(m, v) * done + v) / (done + 1) for m, v in out.values.items()}
        rec.runs.append(out.values[name])
        if out.examples is not None:
            flight.examples.append(out.examples)
            self.ledger.save_examples(rec.n, k, out.examples)
        if rec.n == 0:
            self._baseline_ran(flight)
        else:
            self._decide(flight)

    def _unpaired(self, flight: Flight, out: RunOutcome) -> str:
        """Per-example values that cannot be paired with the baseline's: the trial cannot be judged fairly."""
        if flight.rec.n > 0:
            return per_example.mismatch(self._examples(0), out.examples)
        if flight.examples:
            return per_example.mismatch(flight.examples[0], out.examples)
        return "per-example values reported by only some runs" if flight.rec.runs and out.examples else ""

    def _failed(self, flight: Flight, out: RunOutcome) -> None:
        rec = flight.rec
        if rec.n == 0:
            self.ledger.delete(0)
            raise RunCrashed(f"the baseline failed ({out.status}: {out.reason}); fix it before searching "
                             f"(see {self.run_dir(0)}/run.log)")
        assert out.status is not None, "only a failed run gets here"
        rec.status, rec.reason = out.status, out.reason
        if out.status == Status.LOST:
            rec.reason = f"lost {LOST_RETRIES + 1} times ({out.reason})"
        self.finish(flight)

    # -- deciding ---------------------------------------------------------------------------------
    def _decide(self, flight: Flight) -> None:
        rec, best = flight.rec, self.best()
        assert best.metric is not None, "the best always has its value"
        mine, theirs = per_example.average(flight.examples), self._examples(best.n)
        eval_se = per_example.paired_se(mine, theirs) if mine is not None and theirs is not None else None
        d = decide(self.cfg.primary, rec.runs, best.metric, self.noise(), self.cfg.keep,
                   distinct(best.runs) or None, eval_se)
        if d.verdict == Verdict.CONFIRM:
            self.notify(Event.CONFIRM, rec)
            flight.pending += 1
            self._requeue(flight)
            return
        rec.metric, rec.delta = d.value, d.value - best.metric
        if d.verdict == Verdict.KEEP and rec.parent != best.commit_sha:  # the best moved on while it ran
            if self._rebase(flight):
                self._requeue(flight)
                return
        else:
            rec.status = Status.KEEP if d.verdict == Verdict.KEEP else Status.DISCARD
        self.finish(flight)

    def _rebase(self, flight: Flight) -> bool:
        """Re-apply the trial's change to the current best, to be run from scratch; False: discarded instead."""
        rec, best = flight.rec, self.best()
        new = None if flight.rebases >= MAX_REBASES else self._reapply(flight, best)
        if new is None:
            why = ("the best moved on while it ran" if flight.rebases >= MAX_REBASES
                   else "its change no longer applies to the best")
            rec.status, rec.reason = Status.DISCARD, f"stale: {why} (trial {best.n})"
            return False
        flight.rebases += 1
        rec.parent, rec.commit_sha, rec.runs, rec.metrics = best.commit_sha, new, [], {}
        flight.examples = []
        self.ledger.forget_examples(rec.n)
        rec.metric = rec.delta = None
        rec.reason = f"rebased onto trial {best.n}"
        flight.pending = 1
        (self.run_dir(rec.n) / "diff.patch").write_text(flight.tree.patch(new))
        self.ledger.save(rec)
        self.notify(Event.REBASE, rec)
        return True

    def _reapply(self, flight: Flight, best: TrialRecord) -> str | None:
        """The trial's change on `best` as a new commit (None: it does not apply, or `best` holds it already).

        An agent whose proposal for a trial is fixed (`reproposes`: optuna's point is absolute values, not
        a diff) is asked again on the new best; any other trial's commit is cherry-picked.
        """
        rec, ws = flight.rec, flight.tree
        if not capable(self.agent, "reproposes"):
            return ws.rebase(rec.commit_sha, best.commit_sha)
        ws.reset(best.commit_sha)
        brief = program.brief(self.cfg, rec.n, self.ledger.trials(), best.metric, self.noise(), self._scratchpad(ws),
                              "", self.ledger.get("eval_se"), ws.dir, reply(self.agent))
        try:
            proposal = self._ask(ws, brief, rec)
            files = ws.verify_edits()
        except (AgentFailed, EditRejected):
            ws.reset(best.commit_sha)
            return None
        rec.description = (proposal.description.strip().splitlines() or [rec.description])[0][:400]  # vs the new best
        return ws.commit(f"trial {rec.n}: {rec.description}\n\nstatus: running", files)

    def _start_baseline(self) -> None:
        first = program.current_phase(program.read_program(self.cfg)[1], [], self.cfg)
        rec = TrialRecord(n=0, description="baseline", commit_sha=self.ws.head(), seed=0,
                          phase=first.label if first else "")
        self.ws.reset(rec.commit_sha)
        self.worktrees.claim(self.ws)
        self.ledger.save(rec)
        # Two runs first: when they agree exactly the code is deterministic and more runs would add nothing.
        flight = self.flights[0] = Flight(rec, self.ws, pending=min(2, self.cfg.keep.noise_runs))
        self.ready.append(flight)

    def _baseline_ran(self, flight: Flight) -> None:
        rec, want = flight.rec, self.cfg.keep.noise_runs
        if flight.pending or flight.running:
            return
        same = deterministic(rec.runs) and all(ex.same(flight.examples[0]) for ex in flight.examples)
        if len(rec.runs) < want and not same:
            flight.pending = want - len(rec.runs)
            self._requeue(flight)
            return
        rec.metric = statistics.fmean(rec.runs)
        rec.status = Status.BASELINE
        examples = per_example.average(flight.examples)
        rec.reason = evidence_note(noise(rec.runs), same, examples is not None)
        self.ledger.set_meta(noise=noise(rec.runs), deterministic=same,
                             examples=len(examples) if examples is not None else None,
                             eval_se=per_example.standard_error(examples) if examples is not None else None)
        self.finish(flight)

    # -- recording --------------------------------------------------------------------------------
    def finish(self, flight: Flight) -> None:
        rec = flight.rec
        rec.finished = time.time()
        if rec.commit_sha and rec.n > 0:
            rec.commit_sha = flight.tree.amend(commit_message(rec, self.best(), self.noise(), self.cfg.metric.name))
            self.ws.mark(rec.n, rec.commit_sha)
        elif rec.n == 0:
            self.ws.mark(0, rec.commit_sha)
        if rec.status == Status.KEEP:
            self.ws.reset(rec.commit_sha)  # the branch moves to the new best
        elif flight.ws is self.ws:
            self.ws.reset(self.best().commit_sha if rec.n > 0 else rec.commit_sha)
        self.ledger.save(rec)
        write_tsv(self.ledger.trials(), self.cfg.metric.name, self.state_dir / "results.tsv")
        self.agent.observe(rec.n, Status(rec.status), rec.metric)
        self._release(flight)
        self.notify(Event.DONE, rec)

    # -- state -----------------------------------------------------------------------------------
    def recover(self) -> None:
        """Resume after a crash: trials in flight are run again (counted once); unfinished proposals are redone."""
        self.ledger.interrupt_runs()
        done = [t for t in self.ledger.trials() if t.status != Status.RUNNING]
        # A kill between the ledger save and observe() kept that outcome from the agent (observe is idempotent);
        # so did a tag started with another agent, for the baseline.
        for rec in {t.n: t for t in done[:1] + done[-1:]}.values():
            self.agent.observe(rec.n, Status(rec.status), rec.metric)
        for rec in self.ledger.trials():
            if rec.status != Status.RUNNING:
                continue
            if rec.n == 0 or not rec.commit_sha:
                self.ledger.delete(rec.n)
                continue
            shutil.rmtree(self.run_dir(rec.n), ignore_errors=True)
            self.ledger.forget_examples(rec.n)
            rec.runs, rec.metrics, rec.seconds = [], {}, 0.0
            flight = self.flights[rec.n] = Flight(rec, pending=1)
            self.ready.append(flight)
        best = self.ledger.best()
        if best:
            self.ws.reset(best.commit_sha)

    def _abandon(self) -> None:
        """On the way out (Ctrl-C, an error): stop runs and proposals still in flight; the ledger keeps them running."""
        for _, job, _ in self.jobs.values():
            self.executor.cancel(job.id)
        for flight in self.flights.values():
            if flight.proposal is not None and not flight.proposal.done():
                raise_in(flight.proposal, KeyboardInterrupt)

    def _requeue(self, flight: Flight) -> None:
        """Runs a trial already holding a worktree needs go before new trials."""
        if flight not in self.ready:
            self.ready.appendleft(flight)

    def _release(self, flight: Flight) -> None:
        self.flights.pop(flight.rec.n, None)
        self.worktrees.give_back(flight.ws)

    def best(self) -> TrialRecord:
        best = self.ledger.best()
        assert best is not None, "no baseline"
        return best

    def noise(self) -> float | None:
        return self.ledger.get("noise")

    def _examples(self, n: int) -> per_example.Examples | None:
        """A finished trial's per-example values averaged over its runs (kept and baseline ones never change)."""
        if n not in self.example_cache:
            self.example_cache[n] = self.ledger.mean_examples(n)
        return self.example_cache[n]

    def run_dir(self, n: int, k: int = 0) -> Path:
        path = self.state_dir / "runs" / str(n) / (f"repeat-{k}" if k else "")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _scratchpad(self, ws: Workspace) -> str:
        path = ws.dir / self.cfg.project.scratchpad
        return path.read_text(errors="replace") if path.is_file() else ""

    def _failure_tail(self, trials: list[TrialRecord]) -> str:
        last = next((t for t in reversed(trials) if t.status != Status.RUNNING), None)
        if last and last.status in (Status.CRASH, Status.TIMEOUT):
            return metrics.log_tail(self.run_dir(last.n) / "run.log")
        return ""
