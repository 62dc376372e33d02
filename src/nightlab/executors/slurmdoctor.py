"""`nightlab doctor` for the slurm executor: Slurm's commands, then one tiny probe job with the project's settings.

The probe job runs what every run's job runs first (the setup line, the interpreter, nightlab) and reports
from the compute node: that it sees the project at the same path (the shared file system nightlab needs),
which sandbox works there, the GPUs nvidia-smi lists, and whether the node reaches the internet (it need
not: only the login node talks to the agent's model API). Its answer is `probe.json` in the project's
`.nightlab/doctor/` directory, which the doctor reads back; a job that has not started within WAIT_S is
reported with Slurm's reason (a busy partition, a wrong account).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from nightlab.config import Config
from nightlab.errors import NightlabError
from nightlab.executors import slurmcmd as cmd
from nightlab.executors.batchjob import write_atomic
from nightlab.executors.nodeprobe import node_report, report_checks

WAIT_S = 180.0
PROBE = "probe.json"


def checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """(name, ok, what was found) for each check, in order; a failed step ends the list."""
    out = []
    for command in ("sbatch", "squeue", "scancel", "sinfo"):
        found = shutil.which(command)
        out.append((command, bool(found), found or "not on PATH (run on a login node, or load Slurm's module)"))
        if not found:
            return out
    try:
        partitions = cmd.call(["sinfo", "--noheader", "--format=%P %a %D %G"]).strip().splitlines()
    except NightlabError as e:
        return [*out, ("cluster", False, str(e))]
    out.append(("cluster", True, "; ".join(partitions) or "sinfo lists no partition"))
    return out + probe(cfg)


def probe(cfg: Config) -> list[tuple[str, bool, str]]:
    root = cfg.root / ".nightlab" / "doctor"
    root.mkdir(parents=True, exist_ok=True)
    where = Path(tempfile.mkdtemp(prefix="probe-", dir=root))
    try:
        try:
            job = cmd.sbatch(cfg, f"nightlab.doctor.{where.name}", where, module="nightlab.executors.slurmdoctor",
                             minutes=5)
        except NightlabError as e:
            return [("probe-job", False, f"cannot submit with [executor.slurm]'s settings: {e}")]
        said = _wait(job, where)
        if said is not None:
            return [("probe-job", False, said)]
        found = json.loads((where / PROBE).read_text())
        return [("probe-job", True, f"job {job} ran on {found['host']} with {found['python']}"),
                ("shared-files", True, f"the node sees the project at {cfg.root}"), *report_checks(found)]
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _wait(job: str, where: Path) -> str | None:
    """None once the probe answered; else what went wrong (the job is cancelled if it still waits)."""
    deadline = time.monotonic() + WAIT_S
    while not (where / PROBE).exists():
        q = cmd.squeue().get(job)
        if q is None or q.state not in cmd.ACTIVE:
            time.sleep(2)  # the answer may show late on a network file system
            if (where / PROBE).exists():
                break
            out = (where / "slurm.out").read_text(errors="replace").strip() if (where / "slurm.out").exists() else ""
            if not out:
                return (f"job {job} ended ({q.state if q else 'gone'}) and its files did not appear in {where}: "
                        "is the project on a file system the compute nodes share?")
            return f"job {job} ended ({q.state if q else 'gone'}) without an answer: {out.splitlines()[-1][-300:]}"
        if time.monotonic() > deadline:
            cmd.scancel([job])
            return f"job {job} did not run within {WAIT_S:g}s ({q.state}, Slurm's reason: {q.reason}); cancelled"
        time.sleep(1)
    return None


# -- the job's side ---------------------------------------------------------------------------------------
def answer(where: Path) -> None:
    write_atomic(where / PROBE, json.dumps(node_report()).encode())


if __name__ == "__main__":
    answer(Path(sys.argv[1]))
