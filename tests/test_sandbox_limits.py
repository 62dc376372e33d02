"""Limits and output handling of sandboxed runs: cgroups, rlimits, the capped log, run-dir clean-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nightlab.sandbox.capture import LogCapture, dir_size, sanitize
from nightlab.sandbox.limits import Limits


def _fake_v2(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A cgroup2 tree on disk shaped like a GPU machine's (no v2 memory controller exists here)."""
    root = tmp_path / "cg"
    own = root / "user.slice"
    own.mkdir(parents=True)
    (own / "cgroup.subtree_control").write_text("")
    proc_cgroup = tmp_path / "self-cgroup"
    proc_cgroup.write_text("0::/user.slice\n")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {root} cgroup2 rw 0 0\n")
    return root, proc_cgroup, mounts


def test_cgroup_v2_memory_and_pids_when_delegated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, proc_cgroup, mounts = _fake_v2(tmp_path)
    real_mkdir = Path.mkdir

    def mkdir_with_controls(self: Path, *a, **kw) -> None:  # the kernel creates these files in a new cgroup
        real_mkdir(self, *a, **kw)
        for name in ("memory.max", "memory.swap.max", "pids.max", "cgroup.procs", "memory.events"):
            (self / name).write_text("")

    monkeypatch.setattr(Path, "mkdir", mkdir_with_controls)
    lim = Limits.create(1 << 30, 100, 0, root=tmp_path / "v1", proc_cgroup=proc_cgroup, mounts=mounts)
    monkeypatch.undo()
    assert (lim.memory_via, lim.pids_via) == ("cgroup v2", "cgroup v2")
    (group,) = lim.groups
    assert (group / "memory.max").read_text() == str(1 << 30) and (group / "memory.swap.max").read_text() == "0"
    assert (group / "pids.max").read_text() == "100"
    assert not lim.oom_killed()
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert lim.oom_killed()


def test_without_a_writable_cgroup_memory_falls_back_to_rlimit_data(tmp_path: Path) -> None:
    proc_cgroup = tmp_path / "self-cgroup"
    proc_cgroup.write_text("0::/\n")
    (tmp_path / "mounts").write_text("")
    lim = Limits.create(256 << 20, 0, 0, root=tmp_path / "none", proc_cgroup=proc_cgroup, mounts=tmp_path / "mounts")
    assert lim.memory_via == "RLIMIT_DATA" and lim.groups == []
    alloc = "import sys\ntry:\n    b = bytearray(1 << 30)\nexcept MemoryError:\n    sys.exit(42)\n"
    proc = subprocess.run([sys.executable, "-c", alloc], preexec_fn=lim.preexec)
    assert proc.returncode == 42  # a clean MemoryError, as CUDA-safe RLIMIT_DATA gives (never RLIMIT_AS)


def test_the_real_cgroup_here_caps_memory(tmp_path: Path) -> None:
    lim = Limits.create(128 << 20, 32, 0)
    try:
        assert lim.memory_via.startswith("cgroup"), "this machine has a writable memory cgroup (v1 or v2)"
        proc = subprocess.run([sys.executable, "-c", "b = [bytearray(32 << 20) for _ in range(32)]"],
                              preexec_fn=lim.preexec, capture_output=True)
        assert proc.returncode == -9 and lim.oom_killed()
    finally:
        lim.close()
    assert all(not g.exists() for g in lim.groups)


def _capture(data: bytes, path: Path, max_bytes: int) -> LogCapture:
    r, w = os.pipe()
    cap = LogCapture(r, path, max_bytes)
    cap.start()
    with os.fdopen(w, "wb") as f:
        f.write(data)
    cap.join(10)
    return cap


def test_the_log_keeps_its_start_and_its_tail(tmp_path: Path) -> None:
    data = b"".join(f"line {i}\n".encode() for i in range(200_000)) + b"val_loss: 0.5\n"
    cap = _capture(data, tmp_path / "run.log", 64 << 10)
    text = (tmp_path / "run.log").read_text()
    assert text.startswith("line 0\n") and text.endswith("val_loss: 0.5\n")
    assert cap.dropped == len(data) - (64 << 10) and "bytes of output dropped" in text
    assert len(text) < (64 << 10) + 200
    small = _capture(b"hello\n", tmp_path / "small.log", 64 << 10)
    assert small.dropped == 0 and (tmp_path / "small.log").read_text() == "hello\n"


def test_sanitize_removes_links_fifos_and_directories_named_like_harness_files(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("x" * 10)
    (tmp_path / "link").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "sandbox.json").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..")
    assert sanitize(tmp_path, reserved=("sandbox.json",)) == ["fifo", "link", "sandbox.json", "sub/up"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.txt", "sub"]
    assert dir_size(tmp_path) >= 10
