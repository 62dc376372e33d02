"""The job's side of the Slurm executor: read the job nightlab wrote, run it as a local slot does, report back.

Run as `python -m nightlab.executors.batchjob DIR` on a compute node, where DIR (on the shared file system)
holds `job.pickle`. It writes `started` first and `outcome.pickle` last (renamed into place, so the driver
never reads half of one). The job runs in the trial's own worktree and run directory, which live on the
shared file system, exactly as a local slot runs it.

A SIGTERM (scancel, preemption, a node being drained or failing, Slurm's time limit) stops the run through
the sandbox's own clean-up and writes no outcome: the driver then reads the job's state and reports the
run `lost` (or timed out). Reporting what the killed run printed would turn the infrastructure's failure
into a crash charged to the candidate.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import traceback
from pathlib import Path

from nightlab.executors import Job, execute, with_gpus
from nightlab.sandbox import load_sandbox

JOB, STARTED, OUTCOME = "job.pickle", "started", "outcome.pickle"
TERMINATED = 143  # the exit code of a job stopped by SIGTERM


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM; the sandbox's clean-up then takes the run down."""


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the driver reads it from another machine
    os.replace(tmp, path)


def allotted(job: Job, per_trial: int) -> Job:
    """The GPUs Slurm gave this job (their node-wide indices, as a local slot numbers them)."""
    if not per_trial:
        return job
    ids = os.environ.get("SLURM_JOB_GPUS") or os.environ.get("CUDA_VISIBLE_DEVICES") or ""
    return with_gpus(job, ids)


def run(where: Path) -> int:
    cfg, sandbox, job = pickle.loads((where / JOB).read_bytes())
    write_atomic(where / STARTED, f"{socket.gethostname()} {os.getpid()}\n".encode())
    terminated = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal terminated
        if not terminated:
            terminated = True
            raise Terminated

    signal.signal(signal.SIGTERM, on_term)
    try:
        outcome = execute(cfg, load_sandbox(sandbox), allotted(job, cfg.executor.gpus_per_trial))
        payload: tuple = ("ok", outcome)
    except Terminated:
        return TERMINATED
    except Exception as e:  # a bug, or this node cannot run the job (no sandbox here): the driver raises it
        payload = ("error", e, traceback.format_exc())
    if terminated:
        return TERMINATED
    try:
        data = pickle.dumps(payload)
    except Exception:  # an exception that does not pickle: its text travels
        data = pickle.dumps(("error", RuntimeError(payload[-1]), payload[-1]))
    write_atomic(where / OUTCOME, data)
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
