"""`nightlab doctor`: what works on this machine, and in plain words why the rest does not."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nightlab.config import Config

EXTRAS = {"optuna": "optuna", "anthropic": "anthropic", "openai": "openai", "report": "matplotlib",
          "mlflow": "mlflow"}


@dataclass
class Check:
    section: str
    name: str
    ok: bool
    text: str


def sandboxes() -> list[Check]:
    from nightlab.errors import UsageError
    from nightlab.sandbox.probe import choose_auto, probe_bwrap, probe_engine

    ok, said = probe_bwrap()
    out = [Check("sandbox", "bwrap", ok, f"works ({said})" if ok else f"does not work: {said}")]
    for engine in ("docker", "podman"):
        ok, said = probe_engine(engine)
        out.append(Check("sandbox", engine, ok, f"engine answers ({said})" if ok else f"not usable: {said}"))
        if ok:
            out.append(runtimes(engine))
    out.append(Check("sandbox", "process", True, "always available, but NO isolation: only when chosen explicitly"))
    try:
        out.append(Check("sandbox", "auto", True, f"picks {choose_auto()}"))
    except UsageError as e:
        out.append(Check("sandbox", "auto", False, str(e)))
    return out


def runtimes(engine: str) -> Check:
    """Each OCI runtime the engine could use, run for real with a run's limits: which works, and why not the rest."""
    from nightlab.sandbox.runtime import attempt, installed

    if engine != "podman":
        names = installed(engine)
        return Check("sandbox", f"{engine}-runtime", bool(names), f"the daemon's default: {names[0]}" if names
                     else "the daemon names no default runtime")
    works, said = [], []
    for name in installed(engine):
        found, why = attempt(engine, name)
        if found:
            works.append(name)
            said.append(f"{name} works (--memory, --pids-limit, {', '.join(found.ulimits) or 'the default ulimits'})")
        else:
            said.append(f"{name} fails: {why}")
    head = f"runs use {works[0]}: " if works else ""
    hint = "" if works else " (apt-get install runc; or name one with [sandbox] runtime)"
    return Check("sandbox", f"{engine}-runtime", bool(works), head + ("; ".join(said) or "no OCI runtime found") + hint)


def cgroups() -> list[Check]:
    from nightlab.sandbox.limits import Limits

    lim = Limits.create(1 << 30, 64, 0)
    try:
        mem, pids = lim.memory_via, lim.pids_via
    finally:
        lim.close()
    mem_ok = mem.startswith("cgroup")
    return [Check("limits", "memory", mem_ok, f"capped through {mem} (whole process tree; out-of-memory kills reported)"
                  if mem_ok else "no writable memory cgroup: each process is capped with RLIMIT_DATA instead "
                                 "(per process, so N workers may use N times [sandbox] memory_gb)"),
            Check("limits", "processes", pids != "none", f"capped through {pids}" if pids != "none"
                  else "no writable pids cgroup: [sandbox] max_pids is not enforced (a fork bomb is stopped only by the timeout)")]


def gpus() -> list[Check]:
    from nightlab.sandbox.bwrap import bwrap_path, gpu_devices
    from nightlab.sandbox.probe import probe_bwrap

    devices = gpu_devices("all")
    if not devices:
        return [Check("gpu", "devices", False, "no /dev/nvidia* devices on this machine: runs are CPU-only")]
    out = [Check("gpu", "devices", True, ", ".join(str(d) for d in devices))]
    smi = shutil.which("nvidia-smi")
    if probe_bwrap()[0] and smi:
        args = [bwrap_path(), "--unshare-user", "--uid", "1000", "--gid", "1000", "--cap-drop", "ALL", "--unshare-net",
                "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for d in devices:
            args += ["--dev-bind", str(d), str(d)]
        proc = subprocess.run([*args, "--", smi, "-L"], env={}, capture_output=True, text=True, timeout=60)
        seen = proc.stdout.strip().splitlines()
        out.append(Check("gpu", "inside bwrap", proc.returncode == 0 and bool(seen),
                         "; ".join(seen) if proc.returncode == 0 else f"nvidia-smi failed: {proc.stderr.strip()[-200:]}"))
    return out


def agents_and_extras() -> list[Check]:
    out = []
    tools = Path(__file__).resolve().parents[2] / ".nightlab-tools"
    for name, pkg in (("claude", "claude-code"), ("codex", "codex")):
        local = tools / name / "node_modules" / ".bin" / name
        found = str(local) if local.is_file() else shutil.which(name)
        out.append(Check("agent CLIs", name, bool(found), found or f"not installed (agent {pkg} needs it: npm)"))
    for extra, module in EXTRAS.items():
        ok = importlib.util.find_spec(module) is not None
        out.append(Check("extras", extra, ok, "installed" if ok else f"not installed (pip install 'nightlab[{extra}]')"))
    return out


def executor(cfg: Config) -> list[Check]:
    """The project's executor, when it runs elsewhere (Slurm, SSH hosts): reachable, and what its machines offer."""
    if cfg.executor.name == "slurm":
        from nightlab.executors import slurmdoctor

        return [Check("executor slurm", name, ok, text) for name, ok, text in slurmdoctor.checks(cfg)]
    if cfg.executor.name == "ssh":
        from nightlab.errors import UsageError
        from nightlab.executors.ssh import SshExecutor

        try:
            ex = SshExecutor(cfg, cfg.sandbox.backend, 1)
        except UsageError as e:
            return [Check("executor ssh", "hosts", False, str(e))]
        try:
            return [Check("executor ssh", name, ok, text) for name, ok, text in ex.doctor()]
        finally:
            ex.shutdown()
    return []


def checks(cfg: Config | None = None) -> list[Check]:
    return [*sandboxes(), *cgroups(), *gpus(), *agents_and_extras(), *(executor(cfg) if cfg else [])]
