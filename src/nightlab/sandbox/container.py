"""The docker and podman backends: the same mounts and limits as bwrap, enforced by a container engine.

The image must hold the project's Python environment (`[sandbox] image`): the host's interpreter is not
mounted, because an image's libc need not match it. `python` at the start of a command is the image's.
The engine is started with only its own settings in its environment (runtime.engine_env), so no caller
secret reaches it or the run; podman picks an OCI runtime that works here (runtime.choose) and is told
to kill the container itself past the deadline, should the harness die first (podman has no daemon to
notice, and its conmon outlives a killed client).
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path

from nightlab.errors import UsageError
from nightlab.sandbox import SHELL_SYNTAX, run_env
from nightlab.sandbox.bwrap import HARNESS_RECORDS
from nightlab.sandbox.capture import DirWatch, LogCapture, sanitize
from nightlab.sandbox.runtime import Runtime, choose, engine_env, security_flags
from nightlab.types import RunResult, RunSpec

MB = 1 << 20
BACKSTOP_S = 10  # past the run's own deadline and grace, podman kills a container whose harness died


def container_argv(engine: str, spec: RunSpec, name: str, uid: int | None = None, gid: int | None = None,
                   runtime: Runtime | None = None, dev: Path = Path("/dev")) -> list[str]:
    """`docker run …` / `podman run …` for `spec`: no network, read-only root, no capabilities, limits, mounts."""
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    runtime = runtime or Runtime("")
    a = [engine, *runtime.engine_flags(engine), "run", "--name", name, "--network", "none", "--read-only",
         "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *security_flags(engine), "--user", f"{uid}:{gid}",
         "--init", "--tmpfs", "/tmp:rw,exec", "--workdir", str(spec.cwd), *runtime.run_flags(engine)]
    if engine == "podman":  # a backstop should the harness die: conmon then kills the container itself
        a += ["--timeout", str(math.ceil(spec.timeout_s + spec.grace_s) + BACKSTOP_S)]
    if spec.max_run_dir_mb:  # each file held at the run directory's cap, as under bwrap (RLIMIT_FSIZE)
        size = int(spec.max_run_dir_mb * MB)
        a += ["--ulimit", f"fsize={size}:{size}"]
    if spec.memory_gb:
        size = f"{int(spec.memory_gb * 1024)}m"
        a += ["--memory", size, "--memory-swap", size]
    if spec.max_pids:
        a += ["--pids-limit", str(spec.max_pids)]
    a += _gpu_flags(engine, spec.gpus, dev)
    readonly = [Path(os.path.realpath(p)) for p in [*spec.readonly, spec.cwd]]
    for p in dict.fromkeys(readonly):
        a += ["--volume", f"{p}:{p}:ro"]
    for p in spec.masked:  # the test split, where cwd or a data mount would show it
        if Path(p).exists() and any(q == Path(p) or q in Path(p).parents for q in readonly):
            a += ["--tmpfs", f"{p}:ro"] if Path(p).is_dir() else ["--volume", f"/dev/null:{p}:ro"]
    run_dir = Path(os.path.realpath(spec.run_dir))
    a += ["--volume", f"{run_dir}:{run_dir}:rw"]
    for rec in dict.fromkeys([spec.log_name, *HARNESS_RECORDS]):  # the harness's records stay as it wrote them
        if rec == spec.log_name or ((run_dir / rec).is_file() and not (run_dir / rec).is_symlink()):
            a += ["--volume", f"{run_dir / rec}:{run_dir / rec}:ro"]
    for key, value in run_env(spec).items():
        # The image's own PATH finds its python; --gpus renumbers the chosen GPUs from 0 inside the container.
        if key not in ("PATH", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
            a += ["--env", f"{key}={value}"]
    command = spec.command
    inner = ["/bin/sh", "-c", command] if not SHELL_SYNTAX.isdisjoint(command) else shlex.split(command)
    return a + [spec.image, *inner]


def _gpu_flags(engine: str, gpus: str, dev: Path = Path("/dev")) -> list[str]:
    want = gpus.strip().lower()
    if want in ("", "none") or not (dev / "nvidiactl").exists():  # no GPU here (as bwrap): asking for one fails the run
        return []
    if engine == "podman":  # CDI device names, as the NVIDIA container toolkit generates them
        ids = ["all"] if want == "all" else [i.strip() for i in want.split(",") if i.strip()]
        return [x for i in ids for x in ("--device", f"nvidia.com/gpu={i}")]
    return ["--gpus", "all" if want == "all" else f"device={want}"]


def oom_kills(vmstat: Path = Path("/proc/vmstat")) -> int:
    """The kernel's count of out-of-memory kills since boot (-1 where unknown).

    podman 4.3 with runc on cgroup v1 reports a container killed at its --memory cap as exit 137 with
    State.OOMKilled false (measured), so a SIGKILL nightlab did not send, while this count rose, is
    taken as the memory cap.
    """
    try:
        for line in vmstat.read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


class ContainerSandbox:
    engine = "docker"
    isolated = True

    def __init__(self) -> None:
        from nightlab.sandbox.probe import probe_engine

        self.name = self.engine
        ok, why = probe_engine(self.engine)
        if not ok:
            raise UsageError(f"sandbox {self.engine} does not work here: {why}")

    def run(self, spec: RunSpec) -> RunResult:
        if not spec.image:
            raise UsageError(f"sandbox {self.engine}: set [sandbox] image to an image holding your Python environment")
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = spec.run_dir / spec.log_name
        log_path.touch()
        runtime = choose(self.engine, spec.runtime)
        name = f"nightlab-{uuid.uuid4().hex[:12]}"
        args = container_argv(self.engine, spec, name, runtime=runtime)
        out_r, out_w = os.pipe()
        kills_before = oom_kills()
        start = time.monotonic()
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w, start_new_session=True,
                                env=engine_env())
        os.close(out_w)
        capture = LogCapture(out_r, log_path, int(spec.max_log_mb * MB))
        capture.start()
        try:
            timed_out, too_big = self._supervise(proc, name, spec, start + spec.timeout_s)
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C): take the run down with us
                self._stop(proc, name, 0)
        capture.join(10)
        oom = self._engine("inspect", "--format", "{{.State.OOMKilled}}", name).strip() == "true" or (
            proc.returncode == 128 + signal.SIGKILL and not (timed_out or too_big) and oom_kills() > kills_before)
        self._engine("rm", "--force", name)
        code = proc.returncode
        removed = sanitize(spec.run_dir, reserved=("sandbox.json", "metrics.json"))
        reason = (f"timed out after {spec.timeout_s:g}s" if timed_out else
                  f"run directory exceeded {spec.max_run_dir_mb:g} MB" if too_big else
                  "" if code == 0 else "out of memory" if oom else f"exit code {code}")
        details = {"engine": self.engine, "runtime": runtime.name or "default", "runtimes_failed": runtime.tried,
                   "image": spec.image, "argv": args, "network": "none", "oom_killed": oom,
                   "log_bytes_dropped": capture.dropped, "removed_from_run_dir": removed,
                   "limits": {"memory_gb": spec.memory_gb, "max_pids": spec.max_pids or None, "ulimits": list(runtime.ulimits),
                              "max_log_mb": spec.max_log_mb or None, "max_run_dir_mb": spec.max_run_dir_mb or None}}
        return RunResult(exit_code=code, seconds=time.monotonic() - start, timed_out=timed_out, log_path=log_path,
                         reason=reason, details=details)

    def _supervise(self, proc: subprocess.Popen, name: str, spec: RunSpec, deadline: float) -> tuple[bool, bool]:
        """Wait for the run; stop it at the deadline or when its directory outgrows the cap. (timed out, too big)"""
        watch = DirWatch(spec.run_dir, int(spec.max_run_dir_mb * MB), lambda: None) if spec.max_run_dir_mb else None
        if watch:
            watch.start()
        try:
            while proc.poll() is None:
                if watch and watch.exceeded:
                    self._stop(proc, name, 0)
                    return False, True
                if time.monotonic() >= deadline:
                    self._stop(proc, name, spec.grace_s)
                    return True, False
                try:  # returns as soon as the engine's client exits, not at the next tick
                    proc.wait(timeout=max(0.001, min(0.1, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    pass
            return False, bool(watch and watch.exceeded)
        finally:
            if watch:
                watch.stop()

    def _engine(self, *args: str) -> str:
        try:
            return subprocess.run([self.engine, *args], capture_output=True, text=True, timeout=60, env=engine_env()).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    def _stop(self, proc: subprocess.Popen, name: str, grace_s: float) -> None:
        """SIGTERM to the container (its init forwards it to the whole tree), a grace period, then SIGKILL."""
        self._engine("kill", "--signal", "TERM", name)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        self._engine("kill", "--signal", "KILL", name)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


class DockerSandbox(ContainerSandbox):
    engine = "docker"


class PodmanSandbox(ContainerSandbox):
    engine = "podman"
