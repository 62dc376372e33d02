"""One trial's life: propose → run → decide → (confirm | rebase | re-propose) → record.

Each step returns what happens next (`Next`); the scheduler only starts what a trial asks for and hands back
what finished. A trial starts from a chosen commit (`rec.parent`) and trains at a chosen budget. When its
parent is no longer the best as it is about to run, or would be kept, its change is re-applied to the current
best (rebased) and run again from scratch, at most MAX_REBASES times; a change that no longer applies is
discarded. A trial the frontier policy started from a near-miss (frontier.py) is never rebased. With
screening on, a trial's first run is at the short budget (screening.py) and may end it there.
"""

from __future__ import annotations

import time
from enum import StrEnum

from nightlab import crashpoint, frontier, per_example, program, review, screening
from nightlab.agents import capable
from nightlab.decide import Verdict, decide, distinct
from nightlab.errors import AgentExhausted, AgentFailed, EditRejected
from nightlab.executors import Job
from nightlab.lab import Lab
from nightlab.ledger import TrialRecord
from nightlab.types import Brief, Event, Proposal, RunOutcome, Status
from nightlab.views import commit_message
from nightlab.workspace import Workspace

MAX_REBASES = 2
LOST_RETRIES = 1  # a run the infrastructure lost is run once more before the trial counts as lost


class Next(StrEnum):
    RUN = "run"  # runs to start: `pending` new ones or `retry` lost ones
    WAIT = "wait"  # runs still in flight decide what follows
    RECORD = "record"  # decided: record it and give its worktree back
    DROP = "drop"  # the agent had nothing to propose: the trial never happened


class Trial:
    def __init__(self, lab: Lab, rec: TrialRecord, ws: Workspace | None = None, pending: int = 0,
                 budget_s: float | None = None) -> None:
        self.lab, self.rec, self.ws, self.budget_s = lab, rec, ws, budget_s
        self.pending, self.running = pending, 0
        self.next_k = 0  # run index; keeps growing across rebases, so no run directory is reused
        self.retry: list[int] = []  # lost runs to start again
        self.lost: dict[int, int] = {}  # times each run was lost
        self.examples: list[per_example.Examples] = []  # of each successful run
        self.screening = False  # its next runs are at the short screening budget (screening.py)

    @property
    def tree(self) -> Workspace:
        """Its worktree (a resumed trial holds none until the scheduler gives it one, before its runs)."""
        assert self.ws is not None, f"trial {self.rec.n} holds no worktree"
        return self.ws

    # -- propose ----------------------------------------------------------------------------------------
    def brief(self) -> Brief:
        """Its worktree at the parent; the ledger and the notifier hear of the trial before the agent starts."""
        lab, rec = self.lab, self.rec
        self.tree.reset(rec.parent, unless_clean=True)  # where the last trial's record left it, most often
        program.ensure_scratchpad(self.tree.dir, lab.cfg.project.scratchpad)
        brief = lab.brief(rec.n, self.tree, tail=True)
        brief.text += frontier.starting_note(lab.cfg.search.policy, lab.ledger, rec.parent, lab.cfg.primary)
        rec.phase = brief.phase
        lab.ledger.save(rec)
        lab.notify(Event.PROPOSE, rec)
        (lab.run_dir(rec.n) / "brief.md").write_text(brief.text)
        crashpoint.reached("trial.briefed")
        return brief

    def make(self, brief: Brief) -> None:
        """The agent's turn (in a thread of its own unless inline): edit, verify, commit. No ledger writes here."""
        rec, ws, out = self.rec, self.tree, self.lab.run_dir(self.rec.n)
        proposal = self.lab.ask(ws, brief, rec)
        self.lab.spent(rec, proposal)
        rec.hypothesis = proposal.hypothesis
        try:
            rec.commit_sha, patch = _commit(rec, ws, proposal, "(no description)")
        except EditRejected as e:
            (out / "diff.patch").write_text(getattr(e, "diff", ""), errors="surrogateescape")  # git's bytes, on record
            raise
        (out / "diff.patch").write_text(patch)
        crashpoint.reached("trial.committed")

    def proposed(self, error: BaseException | None) -> Next:
        lab, rec = self.lab, self.rec
        if isinstance(error, (AgentFailed, EditRejected)):
            lab.spent(rec, getattr(error, "proposal", None))  # a failed attempt still costs tokens
            rec.status, rec.reason = Status.REJECTED, str(error)
            return Next.RECORD
        if isinstance(error, AgentExhausted):
            lab.drop(rec.n)
            if self.ws is lab.ws:
                lab.ws.reset(rec.parent)
            rec.reason = str(error)
            return Next.DROP
        if error is not None:
            raise error
        lab.ledger.save(rec)
        self.pending = 1
        self.screening = screening.budget(lab.cfg) is not None  # one short run first
        return Next.RUN

    # -- run ----------------------------------------------------------------------------------------------
    def on_best(self) -> Next:
        """Before its first run: put the trial on the current best (RECORD when it was discarded instead)."""
        rec, best = self.rec, self.lab.best()
        if self.tree.holds() != rec.commit_sha:  # resumed, or its worktree was reused
            self.tree.reset(rec.commit_sha)
        return Next.RUN if rec.parent == best.commit_sha or self.chosen() or self.rebase() else Next.RECORD

    def job(self, slot: int) -> tuple[Job, int]:
        """Its next run (a lost one again first) on `slot`, with the editable files by value for remote workers."""
        rec, lab = self.rec, self.lab
        if self.retry:
            k = self.retry.pop(0)
        else:
            k, self.next_k, self.pending = self.next_k, self.next_k + 1, self.pending - 1
        attempt = self.lost.get(k, 0)
        job = lab.job(rec, self.tree, k, attempt, slot, screening.budget(lab.cfg) if self.screening else self.budget_s)
        if not rec.runs and self.running == 0 and not attempt:
            lab.notify(Event.RUN, rec)
        self.running += 1
        return job, k

    def ran(self, k: int, out: RunOutcome) -> Next:
        rec, lab, name = self.rec, self.lab, self.lab.cfg.metric.name
        self.running -= 1
        lab.finished(rec, out)
        if out.status == Status.LOST:
            self.lost[k] = self.lost.get(k, 0) + 1
            if self.lost[k] <= LOST_RETRIES:
                lab.notify(Event.LOST, rec)
                self.retry.append(k)
                return Next.RUN
        if out.status is None and (why := self._unpaired(out)):
            out.status, out.reason = Status.INVALID, why
        if out.status is not None:
            return self._failed(out.status, out.reason)
        if self.screening:
            return self.screened(out.values[name])
        rec.add_values(out.values, name)
        if out.examples is not None:
            self.examples.append(out.examples)
            lab.ledger.save_examples(rec.n, k, out.examples)
        return self.judge()

    def _unpaired(self, out: RunOutcome) -> str:  # per-example values it cannot pair with the baseline's: unjudgeable
        return per_example.mismatch(self.lab.examples(0), out.examples)

    def _failed(self, status: Status, reason: str) -> Next:
        why = f"lost {LOST_RETRIES + 1} times ({reason})" if status == Status.LOST else reason
        self.rec.status, self.rec.reason = status, why
        return Next.RECORD

    # -- decide -------------------------------------------------------------------------------------------
    def screened(self, value: float) -> Next:
        """After its short run: discarded when clearly worse than the best at that budget, else its full runs."""
        rec, lab = self.rec, self.lab
        self.screening, rec.screen = False, value
        if why := screening.screened_out(lab.cfg, lab.ledger, value):
            rec.status, rec.reason = review.audited(lab, rec, Status.DISCARD), why
            return Next.RECORD
        self.pending = 1
        return Next.RUN

    def judge(self) -> Next:
        """Keep, discard, or run again: against the best as it is when this run ended."""
        lab, rec, best = self.lab, self.rec, self.lab.best()
        assert best.metric is not None, "the best always has its value"
        d = decide(lab.cfg.primary, rec.runs, best.metric, lab.noise(), lab.cfg.keep, distinct(best.runs) or None,
                   lab.paired_se(self.examples, best.n))
        if d.verdict == Verdict.CONFIRM:
            lab.notify(Event.CONFIRM, rec)
            self.pending += 1
            return Next.RUN
        rec.metric, rec.delta = d.value, d.value - best.metric
        if d.verdict == Verdict.KEEP and rec.parent != best.commit_sha and not self.chosen():  # the best moved on
            return Next.RUN if self.rebase() else Next.RECORD
        rec.status = review.audited(lab, rec, Status.KEEP if d.verdict == Verdict.KEEP else Status.DISCARD)
        return Next.RECORD

    def chosen(self) -> bool:  # started from a near-miss the frontier policy chose: never rebased
        return frontier.chosen(self.lab.cfg.search.policy, self.lab.ledger, self.rec.parent)

    def rebase(self) -> bool:
        """Re-apply the trial's change to the current best, to be run from scratch; False: discarded instead."""
        lab, rec, best = self.lab, self.rec, self.lab.best()
        new = None if rec.rebases >= MAX_REBASES else _reapply(lab, rec, self.tree, best)
        if new is None:
            why = ("the best moved on while it ran" if rec.rebases >= MAX_REBASES
                   else "its change no longer applies to the best")
            rec.status, rec.reason = Status.DISCARD, f"stale: {why} (trial {best.n})"
            self.tree.reset(rec.commit_sha)  # its commit keeps its own change, not the best's
            return False
        rec.rebases += 1
        rec.parent, rec.commit_sha, rec.reason = best.commit_sha, new, f"rebased onto trial {best.n}"
        rec.start_over()
        self.examples = []
        lab.ledger.forget_examples(rec.n)
        self.pending = 1
        (lab.run_dir(rec.n) / "diff.patch").write_text(self.tree.patch(new))
        lab.ledger.save(rec)
        lab.notify(Event.REBASE, rec)
        return True

    # -- record -------------------------------------------------------------------------------------------
    def record(self) -> None:
        """Its outcome in the commit message, the ledger, results.tsv and the agent; a keep moves the branch."""
        lab, rec = self.lab, self.rec
        rec.finished = time.time()
        if rec.status == Status.KEEP:  # best() takes the keep recorded last: a clock stepped back must not undo that
            rec.finished = max(rec.finished, (lab.best().finished or 0.0) + 1e-6)
        if rec.commit_sha:
            if rec.status != Status.BASELINE:  # the baseline's commit is the user's own
                rec.commit_sha = self.tree.amend(rec.commit_sha, commit_message(rec, lab.best(), lab.noise(),
                                                                                lab.cfg.metric.name))
            lab.ws.mark(rec.n, rec.commit_sha)
        if rec.status in (Status.KEEP, Status.BASELINE):
            lab.ws.reset(rec.commit_sha)  # the branch moves to the new best
        elif self.ws is lab.ws:
            lab.ws.reset(lab.best().commit_sha)
        lab.ledger.save(rec)
        crashpoint.reached("trial.recorded")
        lab.tabulate(rec)
        lab.agent.observe(rec.n, Status(rec.status), rec.metric)
        lab.notify(Event.DONE, rec)


def _reapply(lab: Lab, rec: TrialRecord, ws: Workspace, best: TrialRecord) -> str | None:
    """The trial's change on `best` as a new commit (None: it does not apply, or `best` holds it already):
    cherry-picked, or asked again of an agent whose proposal is fixed (`reproposes`: optuna's absolute values)."""
    if not capable(lab.agent, "reproposes"):
        return ws.rebase(rec.commit_sha, best.commit_sha)
    told = rec.description
    ws.reset(best.commit_sha)
    try:
        return _commit(rec, ws, lab.ask(ws, lab.brief(rec.n, ws), rec), told)[0]  # against the new best
    except (AgentFailed, EditRejected):
        rec.description = told
        ws.reset(best.commit_sha)
        return None


def _commit(rec: TrialRecord, ws: Workspace, proposal: Proposal, untold: str) -> tuple[str, str]:
    """The agent's edits, checked, as the trial's commit (its name and patch), named by the description."""
    rec.description = (proposal.description.strip().splitlines() or [untold])[0][:400]
    files = ws.verify_edits()  # a rejected trial keeps its description
    return ws.commit(f"trial {rec.n}: {rec.description}\n\nstatus: running", list(files))

