"""Resource limits for a sandboxed run: a cgroup (v2, else v1) for memory and pids, else rlimits.

A cgroup is preferred because it caps the whole process tree (rlimits are per process, so N DataLoader
workers could use N times a limit) and reports out-of-memory kills. Without one, memory falls back to
RLIMIT_DATA: never RLIMIT_AS, which reserves address space and makes CUDA fail at its first allocation.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1
CGROUP_ROOT = Path("/sys/fs/cgroup")
_serial = itertools.count()
OWN_NAME = re.compile(r"nightlab-(\d+)-\d+")  # a run's cgroup: nightlab-<harness pid>-<serial>
_swept: set[Path] = set()


def own_cgroups(proc_cgroup: Path = Path("/proc/self/cgroup")) -> dict[str, str]:
    """Controller → this process's cgroup path; the v2 hierarchy is under the key ''."""
    out: dict[str, str] = {}
    for line in proc_cgroup.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def v2_mount(mounts: Path = Path("/proc/self/mounts")) -> Path | None:
    for line in mounts.read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


@dataclass
class Limits:
    """The limits applied to one run, and the cgroups that hold it (removed by close())."""

    memory_bytes: int = 0
    max_pids: int = 0
    max_file_bytes: int = 0
    memory_via: str = "none"  # "cgroup v2", "cgroup v1", "RLIMIT_DATA" or "none"
    pids_via: str = "none"
    groups: list[Path] = field(default_factory=list)  # cgroups the child joins
    oom_files: list[tuple[Path, str]] = field(default_factory=list)  # (file, counter) to read OOM kills from

    # -- setup --------------------------------------------------------------------------------------
    @classmethod
    def create(cls, memory_bytes: int, max_pids: int, max_file_bytes: int,
               root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup"),
               mounts: Path = Path("/proc/self/mounts")) -> Limits:
        lim = cls(memory_bytes, max_pids, max_file_bytes)
        try:
            own = own_cgroups(proc_cgroup)
        except OSError:
            own = {}
        v2 = v2_mount(mounts) if "" in own else None
        if v2 is not None and (memory_bytes or max_pids):
            lim._try_v2(v2 / own[""].lstrip("/"))
        if memory_bytes and lim.memory_via == "none" and "memory" in own:
            lim._try_v1_memory(root / "memory" / own["memory"].lstrip("/"))
        if max_pids and lim.pids_via == "none" and "pids" in own:
            lim._try_v1_pids(root / "pids" / own["pids"].lstrip("/"))
        if memory_bytes and lim.memory_via == "none":
            lim.memory_via = "RLIMIT_DATA"
        return lim

    @staticmethod
    def _child(parent: Path) -> Path | None:
        sweep(parent)
        child = parent / f"nightlab-{os.getpid()}-{next(_serial)}"
        try:
            child.mkdir()
        except OSError:
            return None
        return child

    def _try_v2(self, parent: Path) -> None:
        child = self._child(parent)
        if child is None:
            return
        if not (child / "memory.max").exists():
            # Controllers must be enabled in the parent; this fails where the parent holds processes.
            _write(parent / "cgroup.subtree_control", "+memory")
            _write(parent / "cgroup.subtree_control", "+pids")
        if self.memory_bytes and _write(child / "memory.max", str(self.memory_bytes)):
            _write(child / "memory.swap.max", "0")
            self.memory_via = "cgroup v2"
            self.oom_files.append((child / "memory.events", "oom_kill"))
        if self.max_pids and _write(child / "pids.max", str(self.max_pids)):
            self.pids_via = "cgroup v2"
        if self.memory_via == "cgroup v2" or self.pids_via == "cgroup v2":
            self.groups.append(child)
        else:
            _rmdir(child)

    def _try_v1_memory(self, parent: Path) -> None:
        child = self._child(parent)
        if child is None:
            return
        if _write(child / "memory.limit_in_bytes", str(self.memory_bytes)):
            _write(child / "memory.memsw.limit_in_bytes", str(self.memory_bytes))  # no swapping past the cap
            self.memory_via = "cgroup v1"
            self.groups.append(child)
            self.oom_files.append((child / "memory.oom_control", "oom_kill"))
        else:
            _rmdir(child)

    def _try_v1_pids(self, parent: Path) -> None:
        child = self._child(parent)
        if child is None:
            return
        if _write(child / "pids.max", str(self.max_pids)):
            self.pids_via = "cgroup v1"
            self.groups.append(child)
        else:
            _rmdir(child)

    # -- in the child, before exec -------------------------------------------------------------------
    def preexec(self) -> None:
        # A harness killed with -9 must not leave a run behind holding the GPU.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        pid = str(os.getpid())
        for group in self.groups:
            (group / "cgroup.procs").write_text(pid)
        if self.memory_via == "RLIMIT_DATA":
            resource.setrlimit(resource.RLIMIT_DATA, (self.memory_bytes, self.memory_bytes))
        if self.max_file_bytes:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_file_bytes, self.max_file_bytes))

    # -- afterwards ----------------------------------------------------------------------------------
    def pids(self) -> set[int]:
        found: set[int] = set()
        for group in self.groups:
            try:
                found |= {int(p) for p in (group / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return found

    def oom_killed(self) -> bool:
        for path, key in self.oom_files:
            try:
                for line in path.read_text().splitlines():
                    name, _, value = line.partition(" ")
                    if name == key and int(value) > 0:
                        return True
            except (OSError, ValueError):
                pass
        return False

    def close(self) -> None:
        for group in self.groups:
            for pid in self.pids():
                _kill(pid, signal.SIGKILL)
            _rmdir(group)
        self.groups = []

    def describe(self) -> dict:
        return {"memory_bytes": self.memory_bytes or None, "memory_via": self.memory_via,
                "max_pids": self.max_pids or None, "pids_via": self.pids_via,
                "max_file_bytes": self.max_file_bytes or None}


def sweep_stale(proc_cgroup: Path = Path("/proc/self/cgroup"), mounts: Path = Path("/proc/self/mounts")) -> None:
    """At a start: the cgroups killed nightlab runs left beside the ones this process would make."""
    try:
        own = own_cgroups(proc_cgroup)
    except OSError:
        return
    v2 = v2_mount(mounts) if "" in own else None
    if v2 is not None:
        sweep(v2 / own[""].lstrip("/"))
    for controller in ("memory", "pids"):
        if controller in own:
            sweep(CGROUP_ROOT / controller / own[controller].lstrip("/"))


def sweep(parent: Path) -> list[Path]:
    """Remove the empty cgroups of nightlab processes that are gone: a harness killed with -9 never ran close().

    Once per parent and process. Only nightlab's own names, only dead owners, only empty groups: a run whose
    harness is alive, or that still holds a process, is left alone.
    """
    if parent in _swept:
        return []
    _swept.add(parent)
    removed = []
    try:
        children = [c for c in parent.iterdir() if c.is_dir()]
    except OSError:
        return []
    for child in children:
        owner = OWN_NAME.fullmatch(child.name)
        if owner is None or Path(f"/proc/{owner[1]}").exists():
            continue
        try:
            if (child / "cgroup.procs").read_text().strip():
                continue
            child.rmdir()
            removed.append(child)
        except OSError:
            continue
    return removed


def _rmdir(path: Path) -> None:
    for _ in range(500):  # a cgroup is busy for a moment after its last process is reaped
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.002)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def namespace_pids(init_pid: int) -> set[int]:
    """Every host pid in the pid namespace whose init is `init_pid` (the sandbox's processes)."""
    try:
        ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return set()
    pids = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"/proc/{entry.name}/ns/pid") == ns:
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


def signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        _kill(pid, sig)
