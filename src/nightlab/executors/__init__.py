"""The Executor role: where a trial's runs execute (local slots, a Ray cluster), chosen by name.

The loop hands an executor one `Job` per run and keeps at most one job per slot; the executor
returns a future of a `RunOutcome`. A run that fails the candidate (crash, timeout, invalid) is an
outcome with that status; `lost` means the infrastructure failed it (a worker or node died), which
the loop retries and never charges to the agent. Only bugs surface as exceptions from the future.
"""

from __future__ import annotations

import socket
import subprocess
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Protocol

from nightlab.config import Config
from nightlab.errors import TrialFailed, UsageError
from nightlab.measure import measure
from nightlab.plugins import EXECUTORS, plugin
from nightlab.sandbox import Sandbox
from nightlab.types import RunOutcome, RunSpec


@dataclass
class Job:
    """One run of one trial's commit."""

    id: str  # unique per attempt, e.g. "3.1a0": trial 3, run 1, attempt 0
    spec: RunSpec  # cwd: the trial's worktree on this machine
    slot: int = 0  # the loop keeps at most one job per slot
    files: dict[str, bytes] = field(default_factory=dict)  # the editable files by value (for remote workers)


class Executor(Protocol):
    name: str
    slots: int

    def submit(self, job: Job) -> Future[RunOutcome]: ...

    def cancel(self, job_id: str) -> None:
        """Stop a job if it is running; its future then ends with a `lost` outcome (or is cancelled)."""
        ...

    def shutdown(self) -> None:
        """Stop whatever still runs and release the workers."""
        ...


def load_executor(name: str, cfg: Config, sandbox: str, slots: int, **options: object) -> Executor:
    """By short name or `module:Class`; `options`: keywords only that executor takes (e.g. `inline` for local)."""
    found = plugin(name, EXECUTORS, f"unknown executor {name!r} (known: {{known}}; or module:Class)")
    return found(cfg, sandbox, slots, **options)


def execute(cfg: Config, sandbox: Sandbox, job: Job) -> RunOutcome:
    """Run one job here (a local slot or a remote worker): the same code on every executor."""
    seconds: list[float] = []
    out = RunOutcome(job=job.id, slot=job.slot, host=socket.gethostname(), hardware=hardware(job.spec.gpus),
                     started=time.time())
    try:
        measured = measure(cfg, sandbox, job.spec, seconds)
        out.values, out.examples = measured.values, measured.examples
    except TrialFailed as e:
        out.status, out.reason = e.status, str(e)
    out.seconds, out.finished = sum(seconds), time.time()
    return out


def slot_gpus(cfg: Config, slot: int, available: list[str] | None = None) -> str:
    """The `RunSpec.gpus` for a slot: its own `gpus_per_trial` ids, or the sandbox's setting when that is 0."""
    per = cfg.executor.gpus_per_trial
    if not per:
        return cfg.sandbox.gpus
    ids = available if available is not None else gpu_ids(cfg.sandbox.gpus)
    return ",".join(ids[slot * per:(slot + 1) * per])


def check_gpus(cfg: Config, slots: int, where: str) -> None:
    """Refuse slots × gpus_per_trial beyond the GPUs this machine (or `[sandbox] gpus`) offers."""
    per = cfg.executor.gpus_per_trial
    if per and slots * per > len(ids := gpu_ids(cfg.sandbox.gpus)):
        raise UsageError(f"{where}: {slots} slots × gpus_per_trial {per} needs {slots * per} GPUs, "
                         f"but {len(ids)} are available ({', '.join(ids) or 'none found'})")


def gpu_ids(setting: str) -> list[str]:
    """GPU indices to hand out: those listed in `[sandbox] gpus`, or every GPU nvidia-smi sees for "all"."""
    want = setting.strip().lower()
    if want in ("", "none"):
        return []
    if want != "all":
        return [i.strip() for i in want.split(",") if i.strip()]
    return [str(i) for i in range(len(_gpu_names()))]


def hardware(gpus: str) -> str:
    """What a run with `gpus` trains on: "cpu", or the GPU model(s) (e.g. "2× NVIDIA H100 80GB HBM3")."""
    ids = gpu_ids(gpus)
    if not ids:
        return "cpu"
    names = _gpu_names()
    models = [names[int(i)] if i.isdigit() and int(i) < len(names) else f"GPU {i} (model unknown)" for i in ids]
    if len(set(models)) == 1 and len(models) > 1:
        return f"{len(models)}× {models[0]}"
    return ", ".join(models)


@lru_cache(maxsize=1)
def _gpu_names() -> tuple[str, ...]:
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(line.strip() for line in proc.stdout.splitlines() if line.strip()) if proc.returncode == 0 else ()


def with_gpus(job: Job, gpus: str) -> Job:
    return replace(job, spec=replace(job.spec, gpus=gpus))
