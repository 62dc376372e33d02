"""An in-process executor for scheduler tests: it never trains; the test answers each run and says when.

Each submitted Job is answered by a function of the test, `answer(job) -> RunOutcome` (see `ok`, `lost`,
`failed` and `knobs`). Answers go out one at a time, oldest job first: the next is answered only once the loop
has read the previous one (`Future.result()`), so the loop's `wait()` never sees two finished runs at
once and a multi-slot interleaving does not depend on which thread wins. A job whose key ("n.k": trial
n, run k, any attempt) is in `hold` waits until the test calls `release(key)`, e.g. from its notify
callback; that is how a test makes one trial finish while another is still running. (A loop that
stopped reading results with `result()` would see the second answer never come: the test times out.)

It records every submitted job with the commit its worktree held, and leaves `fake-<job id>.log` in the
job's run directory, as a run leaves its log, so a test can see what a retry or a resume cleared away.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from nightlab.executors import Job
from nightlab.types import RunOutcome, Status

JOB_ID = re.compile(r"(\d+)\.(\d+)a(\d+)s(\d+)")  # the loop's job ids: trial n, run k, attempt, session


def parse(job_id: str) -> tuple[int, int, int, int]:
    """(trial, run index, attempt, session) of a job id such as "3.1a0s1"."""
    found = JOB_ID.fullmatch(job_id)
    assert found, f"not a job id: {job_id}"
    n, k, attempt, session = map(int, found.groups())
    return n, k, attempt, session


def key(job: Job) -> str:
    """"n.k": which run of which trial, whatever the attempt or session."""
    n, k, _, _ = parse(job.id)
    return f"{n}.{k}"


def knobs(job: Job, file: str = "train.py") -> dict[str, float]:
    """The `NAME = number` lines of the candidate's file, as the job carries it."""
    text = job.files[file].decode()
    return {name: float(value) for name, value in re.findall(r"^([A-Z_]+) = (-?[\d.]+)$", text, re.MULTILINE)}


def ok(job: Job, value: float, metric: str = "val_loss") -> RunOutcome:
    return RunOutcome(job=job.id, values={metric: value}, seconds=1.0, slot=job.slot, host="fake", hardware="cpu")


def lost(job: Job, reason: str = "the worker died") -> RunOutcome:
    return RunOutcome(job=job.id, status=Status.LOST, reason=reason, slot=job.slot, host="fake", hardware="cpu")


def failed(job: Job, status: Status = Status.CRASH, reason: str = "exit code 1", log: str = "") -> RunOutcome:
    """A run that ended badly through the candidate's fault, leaving `log` as its run.log."""
    (job.spec.run_dir / "run.log").write_text(log)
    return RunOutcome(job=job.id, status=status, reason=reason, seconds=1.0, slot=job.slot, host="fake",
                      hardware="cpu")


@dataclass
class Submitted:
    job: Job  # its editable files by value: what its worktree held when it was submitted

    @property
    def key(self) -> str:
        return key(self.job)


class _Answer(Future):
    """A job's future: the loop reading it lets the next answer out."""

    def __init__(self, on_read: Callable[[Future], None]) -> None:
        super().__init__()
        self.on_read = on_read

    def result(self, timeout: float | None = None) -> RunOutcome:
        try:
            return super().result(timeout)
        finally:
            self.on_read(self)


class FakeExecutor:
    name = "fake"

    def __init__(self, answer: Callable[[Job], RunOutcome], slots: int = 1, hold: tuple[str, ...] = ()) -> None:
        self.answer, self.slots, self.hold = answer, slots, set(hold)
        self.submitted: list[Submitted] = []
        self.cancelled: list[str] = []
        self.shut = False
        self.queue: list[tuple[Job, _Answer]] = []  # submitted and not answered yet, oldest first
        self.unread: Future | None = None  # answered, not yet read by the loop
        self.changed = threading.Condition()  # agents in other threads wait for a submission

    # -- the Executor protocol -------------------------------------------------------------------
    def submit(self, job: Job) -> Future[RunOutcome]:
        (job.spec.run_dir / f"fake-{job.id}.log").write_text("started\n")  # what a run leaves in its directory
        with self.changed:
            self.submitted.append(Submitted(job))
            self.changed.notify_all()
        fut = _Answer(self._read)
        self.queue.append((job, fut))
        self._next()
        return fut

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)
        for job, fut in [q for q in self.queue if q[0].id == job_id]:
            self.queue.remove((job, fut))
            fut.set_result(lost(job, "cancelled"))

    def shutdown(self) -> None:
        self.shut = True

    # -- for the test ------------------------------------------------------------------------------
    def release(self, k: str) -> None:
        """Let run "n.k" be answered (now, if it waits and nothing else is unread; else in its turn)."""
        self.hold.discard(k)
        self._next()

    def wait_submitted(self, k: str, timeout: float = 60) -> None:
        """Block (an agent's thread) until run "n.k" was submitted: a state, not a time."""
        with self.changed:
            if not self.changed.wait_for(lambda: any(s.key == k for s in self.submitted), timeout):
                raise AssertionError(f"run {k} was never submitted")

    def ids(self, trial: int | None = None) -> list[str]:
        return [s.job.id for s in self.submitted if trial is None or parse(s.job.id)[0] == trial]

    # -- answering ---------------------------------------------------------------------------------
    def _read(self, fut: Future) -> None:
        if fut is self.unread:
            self.unread = None
            self._next()

    def _next(self) -> None:
        """Answer the oldest job not held, unless an answer still waits to be read."""
        if self.unread is not None:
            return
        waiting = next(((job, fut) for job, fut in self.queue if key(job) not in self.hold), None)
        if waiting is None:
            return
        job, fut = waiting
        self.queue.remove(waiting)
        out = self.answer(job)
        self.unread = fut
        fut.set_result(out)
