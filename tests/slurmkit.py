"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd from Debian's packages, on loopback.

Everything lives in one directory the test owns: a fresh munge key and socket (the machine's own munged, if
any, is not used), a generated slurm.conf on free ports, state, spool and logs. The daemons run in the
foreground as children of the test process, so stopping the cluster stops exactly them. The node declares
four GPUs whose device files are character devices made here (a copy of /dev/null's): Slurm hands them out
and sets CUDA_VISIBLE_DEVICES as it would real ones.

`make test` installs the packages as root (CI is root). Elsewhere the tests skip, saying why; in CI they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from prockit import wait_for

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
GPUS = 4


def unavailable() -> str:
    """Why a cluster cannot start here, or ""."""
    if os.geteuid() != 0:
        return "the Slurm tests start slurmd, which needs root"
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): as root, `make slurm` installs it"
    return ""


def require() -> None:
    if why := unavailable():
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must run the Slurm tests (`make test` installs the packages as root)")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONF = """ClusterName=nltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmUser=root
ReturnToService=2
MpiDefault=none
KillWait=5
SlurmdParameters=config_overrides
DefMemPerCPU=256
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class SlurmCluster:
    """Started by `start()`, stopped (every job cancelled first) by `stop()`; `env` points Slurm's commands at it.

    The node says it has `cpus` CPUs whatever this machine has (config_overrides), so that a few sleeping
    test jobs run at once on a two-core machine."""

    def __init__(self, cpus: int = 4) -> None:
        # A short path: munge's socket must fit a unix socket's 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="nl-slurm-", dir="/tmp"))
        self.cpus = cpus
        self.procs: list[subprocess.Popen] = []
        self.env = {"SLURM_CONF": str(self.dir / "slurm.conf")}

    def _write_config(self) -> None:
        d = self.dir
        for sub in ("state", "spool", "log", "dev"):
            (d / sub).mkdir()
        key = d / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        null = os.stat("/dev/null").st_rdev
        for i in range(GPUS):
            os.mknod(d / "dev" / f"gpu{i}", 0o666 | 0o020000, null)  # S_IFCHR
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20) - 1024
        (d / "slurm.conf").write_text(CONF.format(
            host=socket.gethostname().split(".")[0], ctld_port=free_port(), slurmd_port=free_port(), d=d,
            cpus=self.cpus, memory=memory, gpus=GPUS))
        (d / "gres.conf").write_text(f"Name=gpu File={d}/dev/gpu[0-{GPUS - 1}]\n")

    def _daemon(self, *args: str) -> None:
        log = (self.dir / "log" / f"{Path(args[0]).name}.out").open("wb")
        self.procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env={**os.environ, **self.env}))

    def start(self) -> SlurmCluster:
        self._write_config()
        d = self.dir
        self._daemon("munged", "-F", "--force", f"--key-file={d}/munge.key", f"--socket={d}/munge.sock",
                     f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed", f"--log-file={d}/log/munged.log")
        wait_for(lambda: (d / "munge.sock").exists(), timeout=60, what="munged to listen")
        self._daemon("slurmctld", "-D", "-c", "-i")
        self._daemon("slurmd", "-D", "-c")
        wait_for(self.idle, timeout=90, what=f"the Slurm node to come up (logs in {d / 'log'})")
        return self

    def run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **self.env}, timeout=60)
        if check:
            assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def idle(self) -> bool:
        for p in self.procs:
            assert p.poll() is None, f"{p.args[0]} exited ({p.returncode}); logs in {self.dir / 'log'}"
        return self.run("sinfo", "--noheader", "--format=%t", check=False).strip() == "idle"

    def jobs(self) -> dict[str, tuple[str, str]]:
        """Every job Slurm knows (ended ones too, for a while): id → (name, state)."""
        out = self.run("squeue", "--noheader", "--states=all", "--format=%i|%j|%T")
        return {i: (n, s) for i, n, s in (line.split("|") for line in out.splitlines())}

    def active(self, name_part: str = "") -> dict[str, tuple[str, str]]:
        ended = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY")
        return {i: (n, s) for i, (n, s) in self.jobs().items() if s not in ended and name_part in n}

    def stop(self) -> None:
        try:
            if self.procs and all(p.poll() is None for p in self.procs):
                self.run("scancel", "--user=root", check=False)
                wait_for(lambda: not self.active(), timeout=60, what="the test cluster's jobs to end")
        finally:
            for p in reversed(self.procs):
                p.terminate()
            for p in reversed(self.procs):
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            shutil.rmtree(self.dir, ignore_errors=True)


def slurm_fixture() -> Iterator[SlurmCluster]:
    """For a module-scoped fixture: a cluster, and SLURM_CONF set here (and so in the CLIs the tests run)."""
    require()
    cluster = SlurmCluster()
    try:
        cluster.start()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
            yield cluster
    finally:
        cluster.stop()
