"""The bubblewrap backend: every run in its own user, mount, pid, net, ipc and uts namespaces.

The rules below were each measured, and each closes an escape seen without it: bwrap is exec'd with an EMPTY
environment (its pid-1 init keeps the environment it was started with, readable in /proc/1/environ);
a user namespace with an unprivileged uid and --cap-drop ALL (as root without them the code inside
remounted a read-only bind and wrote to the host); tmpfs over /tmp, /run (filesystem unix sockets stay
reachable through --unshare-net) and the homes, then the interpreter re-bound read-only after them
(pyenv, uv and conda live under $HOME); mounts apply in argv order, so the writable run directory
comes last.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from nightlab.errors import UsageError
from nightlab.metrics import log_tail
from nightlab.sandbox import argv as command_argv
from nightlab.sandbox import run_env
from nightlab.sandbox.capture import DirWatch, LogCapture, sanitize
from nightlab.sandbox.limits import Limits, namespace_pids, signal_all
from nightlab.sandbox.probe import UID, bwrap_path, probe_bwrap
from nightlab.types import RunResult, RunSpec

log = logging.getLogger(__name__)
GID = UID  # the unprivileged identity inside; mapped to the harness's own user outside
SYSTEM_HIDDEN = ("/tmp", "/var/tmp", "/run", "/home", "/root")
SYSTEM_MASKED = ("/etc/shadow", "/etc/gshadow")  # inside, root-owned files read as the sandbox's own
GPU_CONTROL = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "nvidia-caps")
MB = 1 << 20
HARNESS_RECORDS = ("brief.md", "agent.log", "diff.patch")  # written into the run dir before the run


def homes() -> list[str]:
    found = [os.environ.get("HOME", ""), os.path.expanduser("~")]
    try:
        found.append(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    return [h for h in found if h and h != "/"]


def gpu_devices(gpus: str, dev: Path = Path("/dev")) -> list[Path]:
    """The /dev/nvidia* nodes to dev-bind for `gpus` ("all", "none"/"", or indices "0,2")."""
    want = gpus.strip().lower()
    if want in ("", "none") or not (dev / "nvidiactl").exists():
        return []
    if want == "all":
        cards = sorted(p for p in dev.glob("nvidia[0-9]*"))
    else:
        cards = [dev / f"nvidia{i.strip()}" for i in want.split(",") if i.strip().isdigit()]
    return [p for p in [dev / c for c in GPU_CONTROL] + cards if p.exists()]


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def interpreter_paths() -> list[Path]:
    """What `python` needs to start: the venv and the installation it points to (possibly under $HOME)."""
    real = Path(os.path.realpath(sys.executable))
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), real.parent.parent}
    return sorted({Path(os.path.realpath(p)) for p in paths} | paths)


def build_argv(spec: RunSpec, bwrap: str, dev: Path = Path("/dev"),
               home_dirs: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """bwrap's argv for `spec` and the mount table it sets up (recorded in sandbox.json)."""
    # --disable-userns: no nested user namespace, where the run would hold capabilities again
    a = [bwrap, "--unshare-user", "--disable-userns", "--uid", str(UID), "--gid", str(GID), "--cap-drop", "ALL",
         "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
         "--hostname", "nightlab", "--die-with-parent", "--new-session",
         "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    mounts: list[dict] = [{"path": "/", "mode": "ro"}]
    hidden = [Path(p) for p in dict.fromkeys([*SYSTEM_HIDDEN, *(home_dirs if home_dirs is not None else homes())])]
    hidden = [p for p in hidden if p.is_dir() and not p.is_symlink()]
    # The project gets its own tmpfs even under /tmp, so that it can be remounted read-only below.
    hidden += [p.resolve() for p in spec.hidden if p.exists() and p.resolve() not in hidden]
    for p in hidden:
        a += ["--tmpfs", str(p)]
        mounts.append({"path": str(p), "mode": "hidden"})
    for masked in SYSTEM_MASKED:
        if os.path.isfile(masked):
            a += ["--ro-bind", "/dev/null", masked]
            mounts.append({"path": masked, "mode": "hidden"})
    shown: list[Path] = []
    for p in [*[q for q in interpreter_paths() if _under(q, hidden)], *spec.readonly, spec.cwd]:
        p = Path(os.path.realpath(p))
        if p.exists() and p not in shown:
            a += ["--ro-bind", str(p), str(p)]
            mounts.append({"path": str(p), "mode": "ro"})
            shown.append(p)
    masked_dirs = []
    for p in spec.masked:
        p = Path(os.path.abspath(p))
        if p.exists() and (_under(p, shown) or not _under(p, hidden)):
            a += ["--tmpfs", str(p)] if p.is_dir() else ["--ro-bind", "/dev/null", str(p)]
            masked_dirs += [p] if p.is_dir() else []
            mounts.append({"path": str(p), "mode": "hidden"})
    run_dir = Path(os.path.realpath(spec.run_dir))
    a += ["--bind", str(run_dir), str(run_dir)]
    mounts.append({"path": str(run_dir), "mode": "rw"})
    for name in dict.fromkeys([spec.log_name, *HARNESS_RECORDS]):  # the harness's records stay as it wrote them
        if (run_dir / name).is_file() and not (run_dir / name).is_symlink():
            a += ["--ro-bind", str(run_dir / name), str(run_dir / name)]
            mounts.append({"path": str(run_dir / name), "mode": "ro"})
    for d in gpu_devices(spec.gpus, dev):
        a += ["--dev-bind", str(d), str(d)]
        mounts.append({"path": str(d), "mode": "dev"})
    for p in [*hidden, *masked_dirs]:
        if str(p) not in ("/tmp", "/var/tmp"):  # a private /tmp stays writable (compile caches, temp files)
            a += ["--remount-ro", str(p)]
    a += ["--chdir", str(Path(os.path.realpath(spec.cwd))), "--clearenv"]
    for key, value in run_env(spec).items():
        a += ["--setenv", key, value]
    return a + ["--", *command_argv(spec.command)], mounts


class _Status(threading.Thread):
    """Reads bwrap's --json-status-fd: the sandbox init's host pid, then the exit code."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True, name="nightlab-bwrap-status")
        self.fd, self.child_pid = fd, 0
        self.exit_code: int | None = None
        self.started = threading.Event()

    def run(self) -> None:
        with os.fdopen(self.fd, "r") as f:
            for line in f:
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "child-pid" in doc:
                    self.child_pid = int(doc["child-pid"])
                    self.started.set()
                if "exit-code" in doc:
                    self.exit_code = int(doc["exit-code"])
        self.started.set()


class BwrapSandbox:
    name = "bwrap"
    isolated = True

    def __init__(self) -> None:
        ok, why = probe_bwrap()
        if not ok:
            raise UsageError(f"sandbox bwrap does not work here: {why}")
        self.bwrap = bwrap_path() or "bwrap"

    def run(self, spec: RunSpec) -> RunResult:
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = spec.run_dir / spec.log_name
        log_path.touch()
        args, mounts = build_argv(spec, self.bwrap)
        limits = Limits.create(int((spec.memory_gb or 0) * 2**30), spec.max_pids, int(spec.max_run_dir_mb * MB))
        status_r, status_w = os.pipe()
        out_r, out_w = os.pipe()
        start = time.monotonic()
        try:
            proc = subprocess.Popen([*args[:1], "--json-status-fd", str(status_w), *args[1:]], env={}, cwd="/",
                                    stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w, pass_fds=(status_w,),
                                    start_new_session=True, preexec_fn=limits.preexec)
        except BaseException:
            for fd in (status_r, status_w, out_r, out_w):
                os.close(fd)
            limits.close()
            raise
        os.close(status_w)
        os.close(out_w)
        capture = LogCapture(out_r, log_path, int(spec.max_log_mb * MB))
        status = _Status(status_r)
        capture.start()
        status.start()
        oom = False
        try:
            timed_out, too_big = self._supervise(proc, status, limits, spec)
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C): take the run down with us
                self._stop(proc, status, limits, 0)
            oom = limits.oom_killed()
            limits.close()
        capture.join(10)
        status.join(10)
        seconds = time.monotonic() - start
        oom = oom or (limits.memory_via == "RLIMIT_DATA" and _says_out_of_memory(log_path))
        reserved = ("sandbox.json", "metrics.json", f"sandbox-{Path(spec.log_name).stem}.json")
        removed = sanitize(spec.run_dir, reserved=reserved)
        code = status.exit_code if status.exit_code is not None else proc.returncode
        reason = _reason(code, timed_out, too_big, oom, spec)
        details = {"bwrap": self.bwrap, "uid": UID, "network": "none",
                   "namespaces": ["user", "mount", "pid", "net", "ipc", "uts", "cgroup"], "capabilities": "none",
                   "mounts": mounts, "limits": {**limits.describe(), "max_log_mb": spec.max_log_mb or None,
                                                "max_run_dir_mb": spec.max_run_dir_mb or None},
                   "log_bytes_dropped": capture.dropped, "removed_from_run_dir": removed, "oom_killed": oom,
                   "gpus": [m["path"] for m in mounts if m["mode"] == "dev"]}
        return RunResult(exit_code=code, seconds=seconds, timed_out=timed_out, log_path=log_path, reason=reason,
                         details=details)

    def _supervise(self, proc: subprocess.Popen, status: _Status, limits: Limits, spec: RunSpec) -> tuple[bool, bool]:
        deadline = time.monotonic() + spec.timeout_s
        watch = None
        if spec.max_run_dir_mb:
            watch = DirWatch(spec.run_dir, int(spec.max_run_dir_mb * MB), lambda: None)
            watch.start()
        exited = select.poll()  # a pidfd wakes us the moment bwrap exits (Popen.wait polls with sleeps)
        pidfd = os.pidfd_open(proc.pid)
        exited.register(pidfd, select.POLLIN)
        try:
            while proc.poll() is None:
                if watch is not None and watch.exceeded:
                    self._stop(proc, status, limits, 0)
                    return False, True
                if time.monotonic() >= deadline:
                    self._stop(proc, status, limits, spec.grace_s)
                    return True, False
                exited.poll(max(1, min(250, int((deadline - time.monotonic()) * 1000))))
            return False, bool(watch and watch.exceeded)
        finally:
            os.close(pidfd)
            if watch is not None:
                watch.stop()

    @staticmethod
    def _stop(proc: subprocess.Popen, status: _Status, limits: Limits, grace_s: float) -> None:
        """SIGTERM to every process in the sandbox's pid namespace, a grace period, then SIGKILL."""
        status.started.wait(2)
        init = status.child_pid
        pids = (namespace_pids(init) if init else set()) | limits.pids()
        # Not bwrap itself nor its init: either dying first would SIGKILL the run before it can clean up.
        signal_all(pids - {init, proc.pid}, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        if init:
            signal_all({init}, signal.SIGKILL)  # the namespace's init: the kernel kills everything in it
        signal_all(limits.pids(), signal.SIGKILL)
        proc.kill()
        proc.wait()


def _says_out_of_memory(log_path: Path) -> bool:
    tail = log_tail(log_path, lines=20)
    return "MemoryError" in tail or "can't allocate memory" in tail or "Cannot allocate memory" in tail


def _reason(code: int | None, timed_out: bool, too_big: bool, oom: bool, spec: RunSpec) -> str:
    if timed_out:
        return f"timed out after {spec.timeout_s:g}s"
    if too_big:
        return f"run directory exceeded {spec.max_run_dir_mb:g} MB"
    if code == 0:
        return ""
    if oom:
        return "out of memory"
    if code is not None and 128 < code < 128 + 65:  # bwrap reports a child killed by signal N as 128+N
        name = signal.Signals(code - 128).name if code - 128 in signal.valid_signals() else str(code - 128)
        if name == "SIGXFSZ":
            return f"a file exceeded the run directory cap of {spec.max_run_dir_mb:g} MB"
        return f"killed by signal {name}"
    return f"exit code {code}"
