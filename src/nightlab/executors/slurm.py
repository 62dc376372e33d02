"""Slurm: each run is one batch job; nightlab and the agent stay on the login node.

A job's files live on the shared file system under the tag's state directory, `slurm/<job id>/`: the
pickled job, the batch script, Slurm's output, and the outcome the job writes back (executors/batchjob.py).
The run itself reads the trial's worktree and writes its run directory there too, as a local slot would;
only this process writes the ledger.

Which runs ended is learnt two ways: an outcome file appearing (checked often, costs nothing on the
cluster), and `squeue` (asked every `poll_s`) for jobs that ended without one. Such a job was cancelled,
preempted, lost its node, or died: its run is `lost`, which the loop retries once. Jobs never requeue
(`--no-requeue`), so Slurm never runs a run a second time behind the loop's back.

Every job is named `nightlab.<tag>.<job id>.<hash of the state directory>`. Shutting down cancels this
session's jobs; a session that was killed cannot, so the next one on the tag finds and cancels what is
left (queued or running) before it submits anything: never two jobs for one run. `queue.json` in the
state directory lists the jobs in flight and their Slurm states, for `nightlab status`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from nightlab.config import Config
from nightlab.errors import NightlabError, UsageError
from nightlab.executors import Job
from nightlab.executors import slurmcmd as cmd
from nightlab.executors.batchjob import JOB, OUTCOME, STARTED, write_atomic
from nightlab.types import RunOutcome, Status

log = logging.getLogger(__name__)
TICK_S = 0.2  # how often outcome files are looked for
LATE_OUTCOME_S = 60.0  # an ended job's outcome may show late on a network file system (attribute caches)
STOP_WAIT_S = 120.0  # how long cancelled jobs get to leave the queue
QUEUE_FILE = "queue.json"
# Ended states whose runs are lost at once (the job was stopped from outside).
GONE = {"CANCELLED": "was cancelled", "PREEMPTED": "was preempted", "NODE_FAIL": "lost its node",
        "BOOT_FAIL": "lost its node (boot failure)", "DEADLINE": "passed its deadline", "REVOKED": "was revoked"}


@dataclass
class InFlight:
    job: Job
    dir: Path
    slurm_id: str
    future: Future = field(default_factory=Future)
    state: str = "PENDING"
    cancelled: bool = False  # by this executor
    ended_at: float | None = None  # when Slurm first said it ended, without an outcome


class SlurmExecutor:
    name = "slurm"

    def __init__(self, cfg: Config, sandbox: str, slots: int, state: Path | None = None) -> None:
        for command in ("sbatch", "squeue", "scancel"):
            cmd.need(command)
        self.cfg, self.sandbox, self.slots = cfg, sandbox, slots  # the sandbox's name: "auto" resolves on the node
        self.state = (state or cfg.root / ".nightlab" / "slurm-jobs").resolve()
        self.jobs_dir = self.state / "slurm"
        self.tag = self.state.name
        self.suffix = job_suffix(self.state)
        self.inflight: dict[str, InFlight] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.poll_now = threading.Event()
        self.last_poll = 0.0
        self.sweep()
        self.monitor = threading.Thread(target=self._watch, daemon=True, name="nightlab-slurm")
        self.monitor.start()

    def _ours(self, q: cmd.Queued) -> bool:
        return q.name.startswith(f"nightlab.{self.tag}.") and q.name.endswith(self.suffix)

    def sweep(self) -> None:
        """Cancel the tag's jobs an earlier session left queued or running, and wait until they have ended."""
        left = [q.id for q in cmd.squeue().values() if self._ours(q) and q.state in cmd.ACTIVE]
        if left:
            log.warning("cancelling %d Slurm job(s) an earlier session of tag %s left: %s", len(left), self.tag,
                        " ".join(left))
            self._scancel(left)
            self._wait_ended(left)
        shutil.rmtree(self.jobs_dir, ignore_errors=True)
        self.jobs_dir.mkdir(parents=True, mode=0o700)
        self._write_queue()

    def _wait_ended(self, ids: list[str]) -> None:
        deadline = time.monotonic() + STOP_WAIT_S
        while (still := [i for i in ids if (q := cmd.squeue().get(i)) and q.state in cmd.ACTIVE]):
            if time.monotonic() > deadline:
                raise NightlabError(f"Slurm jobs {' '.join(still)} did not end {STOP_WAIT_S:g}s after scancel")
            time.sleep(1.0)

    def submit(self, job: Job) -> Future[RunOutcome]:
        where = self.jobs_dir / job.id
        where.mkdir(mode=0o700)
        write_atomic(where / JOB, pickle.dumps((self.cfg, self.sandbox, job)))
        slurm_id = cmd.sbatch(self.cfg, f"nightlab.{self.tag}.{job.id}{self.suffix}", where)
        (where / "slurm-id").write_text(slurm_id + "\n")
        entry = InFlight(job, where, slurm_id)
        with self.lock:
            self.inflight[job.id] = entry
        self._write_queue()
        log.debug("run %s is Slurm job %s", job.id, slurm_id)
        return entry.future

    def cancel(self, job_id: str) -> None:
        with self.lock:
            entry = self.inflight.get(job_id)
            if entry is None:
                return
            entry.cancelled = True
        self._scancel([entry.slurm_id])
        self.poll_now.set()

    def shutdown(self) -> None:
        with self.lock:
            entries = list(self.inflight.values())
            for e in entries:
                e.cancelled = True
        ids = [e.slurm_id for e in entries]
        try:
            if ids:
                self._scancel(ids)
                self._wait_ended(ids)
        except NightlabError as err:  # slurmctld gone: say so, and let what stopped nightlab surface
            log.warning("%s; check `squeue --me` for jobs still running", err)
        finally:
            self.stopping.set()
            self.monitor.join(timeout=30)
            for e in entries:
                self._finish(e, self._lost(e, "cancelled"))
            self._write_queue()

    def _scancel(self, ids: list[str]) -> None:
        try:
            cmd.scancel(ids)
        except NightlabError as err:  # e.g. a job that ended meanwhile
            log.warning("%s", err)

    # -- the monitor thread ----------------------------------------------------------------------------
    def _watch(self) -> None:
        try:
            self._watch_loop()
        except BaseException as err:  # a bug: every run in flight raises it, rather than waiting forever
            with self.lock:
                entries, self.inflight = list(self.inflight.values()), {}
            for e in entries:
                e.future.set_exception(err)
            raise

    def _watch_loop(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                entries = list(self.inflight.values())
            for e in entries:
                if (e.dir / OUTCOME).exists():
                    self._finish(e, self._read(e))
            due = time.monotonic() - self.last_poll >= self.cfg.executor.slurm.poll_s or self.poll_now.is_set()
            if due:
                self.poll_now.clear()
                self.last_poll = time.monotonic()
                if entries:
                    self._poll(entries)
            self.poll_now.wait(TICK_S)

    def _poll(self, entries: list[InFlight]) -> None:
        try:
            queued = cmd.squeue()
        except NightlabError as err:  # slurmctld busy or restarting: the jobs go on, ask again later
            log.warning("%s", err)
            return
        changed = False
        for e in entries:
            q = queued.get(e.slurm_id)
            state = q.state if q else "GONE"
            changed |= state != e.state
            e.state = state
            if state in cmd.ACTIVE or e.future.done() or (e.dir / OUTCOME).exists():
                continue
            e.ended_at = e.ended_at or time.monotonic()
            if e.cancelled:
                self._finish(e, self._lost(e, "cancelled"))
            elif state in GONE:
                self._finish(e, self._lost(e, f"Slurm job {e.slurm_id} {GONE[state]}"))
            elif state == "TIMEOUT":
                self._finish(e, self._lost(e, f"Slurm job {e.slurm_id} reached its time limit "
                                              f"({cmd.time_limit_min(self.cfg)} min)", Status.TIMEOUT))
            elif state not in ("COMPLETED", "GONE") or time.monotonic() - e.ended_at > LATE_OUTCOME_S:
                self._ended_without_outcome(e, state)  # the job's side exits 0 only after writing its outcome
        if changed:
            self._write_queue()

    def _ended_without_outcome(self, e: InFlight, state: str) -> None:
        tail = _tail(e.dir / "slurm.out")
        if not (e.dir / STARTED).exists() and state != "GONE":
            # nightlab never started in the job: the setup line or the interpreter is wrong, on every job alike
            self._finish(e, error=UsageError(
                f"Slurm job {e.slurm_id} ended ({state}) before nightlab started in it: {tail or 'no output'} "
                f"(check [executor.slurm] setup and python; the job's files: {e.dir})"))
        else:
            why = "vanished from the queue" if state == "GONE" else f"ended ({state})"
            self._finish(e, self._lost(e, f"Slurm job {e.slurm_id} {why} without a result"
                                          + (f": {tail}" if tail else "")))

    @staticmethod
    def _read(e: InFlight) -> RunOutcome | BaseException:
        """("ok", outcome) or ("error", exception, its traceback's text), as batchjob wrote it."""
        return pickle.loads((e.dir / OUTCOME).read_bytes())[1]

    def _lost(self, e: InFlight, reason: str, status: Status = Status.LOST) -> RunOutcome:
        return RunOutcome(job=e.job.id, slot=e.job.slot, status=status, reason=reason)

    def _finish(self, e: InFlight, result: RunOutcome | BaseException | None = None,
                error: BaseException | None = None) -> None:
        with self.lock:
            if self.inflight.get(e.job.id) is not e:
                return
            del self.inflight[e.job.id]
        if isinstance(result, BaseException):
            error, result = result, None
        if error is not None:
            e.future.set_exception(error)
            return
        assert result is not None
        e.future.set_result(result)
        if result.status is None or result.status != Status.LOST:
            shutil.rmtree(e.dir, ignore_errors=True)  # a lost job's files stay, to see what happened
        self._write_queue()

    def _write_queue(self) -> None:
        with self.lock:
            rows = {e.job.id: {"where": f"Slurm job {e.slurm_id}", "state": e.state} for e in self.inflight.values()}
        try:
            write_atomic(self.state / QUEUE_FILE, json.dumps(rows).encode())
        except OSError:
            pass  # only `nightlab status` reads it


def job_suffix(state: Path) -> str:
    """The end of the names of a tag's jobs: its state directory's hash (two projects may share a tag name)."""
    return "." + hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:8]


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-400:]

