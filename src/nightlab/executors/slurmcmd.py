"""Slurm's commands as nightlab uses them: the batch script, sbatch, squeue and scancel, in a minimal environment.

sbatch hands its caller's environment to the job by default (`--export=ALL`). nightlab's environment may hold
API keys, so every Slurm command runs with only the variables in KEPT_ENV: a job sees those, Slurm's own, and
whatever its setup line adds.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nightlab.config import Config
from nightlab.errors import NightlabError, UsageError

KEPT_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SLURM_CONF")
# The states of a job that may still run (or start); any other state, or none at all, means it ended.
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING",
                    "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"})
MARGIN_MIN = 10  # the default time limit's room beyond the run's own timeout (start-up, copying, the evaluator)


@dataclass
class Queued:
    id: str
    name: str
    state: str
    reason: str = ""


def slurm_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in KEPT_ENV}


def need(command: str) -> str:
    found = shutil.which(command)
    if found is None:
        raise UsageError(f"[executor] name = \"slurm\": {command} not found on PATH (run nightlab on a Slurm "
                         "login node, or load Slurm's module first)")
    return found


def call(args: list[str], timeout: float = 60) -> str:
    """A Slurm command's stdout; a failure is one line naming the command and what Slurm said."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=slurm_env(),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise NightlabError(f"{args[0]} did not answer in {timeout:g}s (is slurmctld up?)") from None
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise NightlabError(f"{args[0]} failed (exit {proc.returncode}): {said[-1] if said else ''}")
    return proc.stdout


def time_limit_min(cfg: Config) -> int:
    if cfg.executor.slurm.time_limit_min:
        return cfg.executor.slurm.time_limit_min
    runs = 2 if cfg.metric.evaluate else 1  # the evaluator has the same timeout as training
    return math.ceil(runs * (cfg.run.timeout_s + cfg.run.grace_s) / 60) + MARGIN_MIN


def script(cfg: Config, where: Path, module: str = "nightlab.executors.batchjob") -> str:
    """The batch script: the extra #SBATCH lines, the setup line, then nightlab's side of the job (`module`)."""
    s = cfg.executor.slurm
    python = s.python or sys.executable
    lines = ["#!/bin/bash", *(f"#SBATCH {opt}" for opt in s.sbatch)]
    if s.setup:
        lines += ["set -e  # a failing setup line ends the job before the run", s.setup, "set +e"]
    lines.append(f"exec {shlex.quote(python)} -m {module} {shlex.quote(str(where))}")
    return "\n".join(lines) + "\n"


def sbatch(cfg: Config, name: str, where: Path, module: str = "nightlab.executors.batchjob",
           minutes: int | None = None) -> str:
    """Submit the job in `where` (its script written there first); its Slurm job id. It never requeues: a
    requeued job would run a run twice, and the loop retries what was lost itself."""
    s = cfg.executor.slurm
    (where / "job.sh").write_text(script(cfg, where, module))
    args = ["sbatch", "--parsable", "--no-requeue", f"--job-name={name}", f"--output={where / 'slurm.out'}",
            f"--chdir={where}", f"--time={minutes or time_limit_min(cfg)}", f"--cpus-per-task={s.cpus}"]
    args += [f"--{key}={value}" for key, value in (("partition", s.partition), ("account", s.account),
                                                  ("qos", s.qos)) if value]
    if s.memory_gb:
        args.append(f"--mem={math.ceil(s.memory_gb * 1024)}M")
    if cfg.executor.gpus_per_trial:
        args.append(f"--gpus={cfg.executor.gpus_per_trial}")
    try:
        return call([*args, str(where / "job.sh")]).strip().split(";")[0]
    except NightlabError as e:  # Slurm refuses the settings (a partition, account or option it does not know)
        raise UsageError(f"{e} (check [executor.slurm] and gpus_per_trial)") from None


def squeue() -> dict[str, Queued]:
    """This user's jobs Slurm still knows (finished ones for a few minutes after), by job id."""
    out = call(["squeue", "--me", "--noheader", "--states=all", "--format=%i|%T|%r|%j"])
    jobs = {}
    for line in out.splitlines():
        parts = line.split("|", 3)
        if len(parts) == 4:
            jobs[parts[0]] = Queued(id=parts[0], state=parts[1], reason=parts[2], name=parts[3])
    return jobs


def scancel(ids: list[str]) -> None:
    if ids:
        call(["scancel", *ids])
