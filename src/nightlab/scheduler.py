"""Where trials wait and run: the executor's slots, the worktrees trials borrow, the agent's threads.

With one slot (and no pipeline) everything happens in the caller's thread, one step after another. With K
slots up to K trials are in flight (K+1 with `pipeline`: the agent prepares the next trial while the slots
train), each in a worktree of its own. A trial that has run before goes ahead of new ones. An agent that
cannot work on two trials at once takes its turns in the order the trials were numbered, each after the last
has ended, so its proposals end, and their trials queue to run, in that order too (the scripted agent's
idea n is trial n's). The scheduler decides nothing about a trial: it starts what the trial asks for and
hands back what finished.
"""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

from nightlab.errors import AgentExhausted, AgentFailed, EditRejected
from nightlab.executors import Executor, Job
from nightlab.trial import Next, Trial
from nightlab.types import Brief, RunOutcome
from nightlab.workspace import Workspace


@dataclass
class Proposed:
    trial: Trial
    error: BaseException | None  # what the agent's turn raised, if anything


@dataclass
class Ran:
    trial: Trial
    k: int
    outcome: RunOutcome


class Scheduler:
    def __init__(self, executor: Executor, branch: Workspace, pipeline: bool = False, serial: bool = True) -> None:
        self.executor = executor
        self.serial = serial  # the agent's turns one after another (it is not `concurrent`)
        self.last_turn: Future | None = None
        self.capacity = executor.slots + int(pipeline)
        self.inline = self.capacity == 1  # propose in this thread: Ctrl-C reaches the agent directly
        self.trials: dict[int, Trial] = {}  # in flight, by number
        self.ready: deque[Trial] = deque()  # with runs to start, in order
        self.jobs: dict[Future, tuple[Trial, Job, int]] = {}
        self.proposals: dict[Future, Trial] = {}
        self.finished: list[Proposed | Ran] = []  # proposals made inline, not yet handed back
        self.free_slots = list(range(executor.slots))
        self.worktrees = Worktrees(branch, self.capacity)
        self.seen_jobs: set[str] = set()

    def room(self) -> bool:
        """Whether one more trial may start proposing."""
        return len(self.trials) < self.capacity and self.worktrees.available()

    def worktree(self) -> Workspace:
        ws = self.worktrees.take()
        assert ws is not None, "proposals start only while a worktree is available"
        return ws

    def add(self, trial: Trial) -> None:
        """A trial with runs to start (the baseline, a resumed trial): it runs in the order added."""
        self.trials[trial.rec.n] = trial
        if trial.ws is not None:
            self.worktrees.claim(trial.ws)
        self.ready.append(trial)

    def propose(self, trial: Trial, brief: Brief) -> None:
        """The agent's turn for `trial`; wait() hands back its end."""
        self.trials[trial.rec.n] = trial
        if not self.inline:
            # A lock alone would let a later turn win it, or end first while the earlier one commits.
            turn = in_thread(trial.make, brief, after=self.last_turn if self.serial else None)
            self.proposals[turn], self.last_turn = trial, turn
            return
        try:
            trial.make(brief)
            self.finished.append(Proposed(trial, None))
        except (AgentFailed, EditRejected, AgentExhausted) as e:
            self.finished.append(Proposed(trial, e))

    def settle(self, trial: Trial, step: Next) -> None:
        """Do what the trial's last step asked for."""
        if step is Next.RUN and trial not in self.ready:
            if trial.next_k:  # it holds a worktree already: its runs go before new trials
                self.ready.appendleft(trial)
            else:
                self.ready.append(trial)
        elif step is Next.RECORD:
            trial.record()
        if step in (Next.RECORD, Next.DROP):
            self.trials.pop(trial.rec.n, None)
            self.worktrees.give_back(trial.ws)

    def dispatch(self) -> None:
        """Start runs on free slots, the oldest trials first."""
        for trial in list(self.ready):
            while (trial.pending or trial.retry) and self.free_slots and trial.rec.n in self.trials:
                if trial.ws is None:
                    trial.ws = self.worktrees.take()
                    if trial.ws is None:
                        break  # a resumed trial waiting for a worktree
                if trial.running == 0 and not trial.rec.runs and (step := trial.on_best()) is not Next.RUN:
                    self.settle(trial, step)
                    break
                job, k = trial.job(self.free_slots.pop(0))
                self.jobs[self.executor.submit(job)] = (trial, job, k)
            if not (trial.pending or trial.retry) or trial.rec.n not in self.trials:
                self.ready.remove(trial)

    def wait(self) -> list[Proposed | Ran]:
        """What finished: proposals and runs, at least one."""
        if self.finished:
            done, self.finished = self.finished, []
            return done
        if not self.jobs and not self.proposals:
            raise RuntimeError(f"nothing in flight but trials waiting: {sorted(self.trials)}")
        futures: set[Future] = set()
        while not futures:  # short waits keep Ctrl-C prompt
            futures, _ = wait([*self.jobs, *self.proposals], timeout=1.0, return_when=FIRST_COMPLETED)
        ended: list[Proposed | Ran] = []
        # proposals that ended together queue to run in their trials' order, not the set's
        for fut in sorted(futures, key=lambda f: self.proposals[f].rec.n if f in self.proposals else -1):
            if fut in self.proposals:
                ended.append(Proposed(self.proposals.pop(fut), fut.exception()))
                continue
            trial, job, k = self.jobs.pop(fut)
            out = fut.result()
            if out.job not in self.seen_jobs:  # an executor may answer twice for one job: the first answer counts
                self.seen_jobs.add(out.job)
                self.free_slots.append(job.slot)
                ended.append(Ran(trial, k, out))
        return ended

    def abandon(self) -> None:
        """On the way out (Ctrl-C, an error): stop runs and proposals still in flight; the ledger keeps them running."""
        for _, job, _ in self.jobs.values():
            self.executor.cancel(job.id)
        for fut in self.proposals:
            if not fut.done():
                raise_in(fut, KeyboardInterrupt)


class Worktrees:
    """The worktrees trials borrow. One trial at a time uses the branch's own (as the seed does); more get
    detached ones of their own, made when first needed, so the branch moves only when a trial is kept."""

    def __init__(self, branch: Workspace, size: int) -> None:
        self.branch, self.size, self.made = branch, size, 0
        self.idle: list[Workspace] = [branch] if size == 1 else []

    def available(self) -> bool:
        return bool(self.idle) or (self.size > 1 and self.made < self.size)

    def take(self) -> Workspace | None:
        if self.idle:
            return self.idle.pop()
        if self.size > 1 and self.made < self.size:
            self.made += 1
            return self.branch.spare(self.made - 1)
        return None

    def claim(self, ws: Workspace) -> None:
        """`ws` is in use outside the pool (the baseline runs in the branch's worktree)."""
        if ws in self.idle:
            self.idle.remove(ws)

    def give_back(self, ws: Workspace | None) -> None:
        if ws is not None and (ws is not self.branch or self.size == 1):
            self.idle.append(ws)


def in_thread(fn: Callable, *args: object, after: Future | None = None) -> Future:
    """Run `fn` in a daemon thread (an agent stuck in a call must not keep nightlab from exiting), once `after`
    has ended (however it ended)."""
    fut: Future = Future()

    def work() -> None:
        try:
            if after is not None:
                wait([after])
            fut.set_result(fn(*args))
        except BaseException as e:  # handed to the main thread, which re-raises what it does not expect
            fut.set_exception(e)

    thread = threading.Thread(target=work, daemon=True, name="nightlab-agent")
    fut.thread = thread  # type: ignore[attr-defined]
    thread.start()
    return fut


def raise_in(fut: Future, exc: type[BaseException]) -> None:
    thread = getattr(fut, "thread", None)
    if thread is not None and thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))
