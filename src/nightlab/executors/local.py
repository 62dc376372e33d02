"""Local slots: runs in threads of this process, each slot pinned to its own GPUs."""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from nightlab.config import Config
from nightlab.executors import Job, check_gpus, execute, slot_gpus, with_gpus
from nightlab.sandbox import load_sandbox
from nightlab.types import RunOutcome, Status


class Cancelled(BaseException):
    """Raised inside a slot's thread to stop its run; the sandbox's own clean-up then takes the run down."""


class LocalExecutor:
    name = "local"

    def __init__(self, cfg: Config, sandbox: str, slots: int, inline: bool = False) -> None:
        check_gpus(cfg, slots, "--slots")
        self.cfg, self.slots, self.inline = cfg, slots, inline
        self.sandbox = load_sandbox(sandbox)
        self.pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="nightlab-slot")
        self.running: dict[str, int] = {}  # job id → thread id
        self.lock = threading.Lock()

    def submit(self, job: Job) -> Future[RunOutcome]:
        job = with_gpus(job, slot_gpus(self.cfg, job.slot))
        if not self.inline:
            return self.pool.submit(self._run, job)
        # One slot and nothing to overlap: run in the caller's thread, so Ctrl-C reaches the sandbox directly.
        done: Future[RunOutcome] = Future()
        done.set_result(execute(self.cfg, self.sandbox, job))
        return done

    def _run(self, job: Job) -> RunOutcome:
        with self.lock:
            self.running[job.id] = threading.get_ident()
        try:
            return execute(self.cfg, self.sandbox, job)
        except Cancelled:
            return RunOutcome(job=job.id, slot=job.slot, status=Status.LOST, reason="cancelled")
        finally:
            with self.lock:
                self.running.pop(job.id, None)

    def cancel(self, job_id: str) -> None:
        with self.lock:
            ident = self.running.get(job_id)
            if ident is not None:
                # Delivered at the thread's next bytecode: both sandboxes wait in short Python-level polls.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(Cancelled))

    def shutdown(self) -> None:
        for job_id in list(self.running):
            self.cancel(job_id)
        self.pool.shutdown(wait=True, cancel_futures=True)
