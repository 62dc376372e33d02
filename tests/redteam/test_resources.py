"""Red team, part 2: a hostile train.py tries to exhaust resources, outlive its run, escalate, or forge results.

Each test runs one script through the real `nightlab trial` under the real bwrap backend (with small
limits, so each attack ends in seconds) and asserts the outcome from the host.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from rtkit import EPILOGUE, FORK_BOMB, PRELUDE, attack, forked, sandbox_config

from nlkit import idea, make_project, sub
from prockit import host_pids_with


def test_fork_bomb_is_contained(tmp_path: Path) -> None:
    marker = f"bomb-{uuid.uuid4().hex[:8]}"
    body = FORK_BOMB.format(marker=marker)
    out = attack(tmp_path, body, max_pids=64)
    assert "BlockingIOError" in out.failed("fork_bomb") or "Resource temporarily" in out.failed("fork_bomb")
    assert forked(out.log) < 64
    assert out.sandbox["limits"]["pids_via"].startswith("cgroup")
    assert host_pids_with(marker) == []  # nothing outlived the run


def test_thousands_of_threads_are_capped(tmp_path: Path) -> None:
    body = '''
import threading
started = []
def spawn():
    for _ in range(5000):
        t = threading.Thread(target=time.sleep, args=(30,), daemon=True)
        t.start()
        started.append(t)
attempt("threads", spawn)
print(f"threads: {len(started)}")
'''
    out = attack(tmp_path, body, max_pids=100)
    assert "can't start new thread" in out.failed("threads")
    assert int(out.log.split("threads: ")[1].split()[0]) < 100


def test_memory_bomb_is_killed_and_reported_as_out_of_memory(tmp_path: Path) -> None:
    body = '''
blocks = []
for _ in range(64):
    blocks.append(bytearray(64 << 20))  # 4 GiB in all, against a 256 MiB cap
print("survived the memory bomb")
'''
    out = attack(tmp_path, body, memory_gb=0.25)
    assert out.proc.returncode == 1
    assert "crash: out of memory" in out.proc.stderr
    assert "survived" not in out.log
    assert out.sandbox["exit_reason"] == "out of memory" and out.sandbox["oom_killed"] is True


def test_filling_the_disk_through_the_run_dir_is_stopped(tmp_path: Path) -> None:
    body = '''
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
for i in range(2000):  # 2 GB in 1 MB files, against an 8 MB cap
    with open(os.path.join(run_dir, f"fill-{i}.bin"), "wb") as f:
        f.write(b"x" * (1 << 20))
    time.sleep(0.002)
print("filled the disk")
'''
    out = attack(tmp_path, body, max_run_dir_mb=8)
    assert out.proc.returncode == 1
    assert "run directory exceeded 8 MB" in out.proc.stderr
    used = sum(p.stat().st_size for p in out.run_dir.iterdir())
    # stopped within a few polls (every 0.1 s; a loaded machine delays them), far from the 2 GB it tried
    assert used < 600 << 20
    assert "filled the disk" not in out.log


def test_one_huge_file_hits_the_file_size_limit(tmp_path: Path) -> None:
    body = '''
attempt("big_file", lambda: open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "big.bin"), "wb").write(b"x" * (64 << 20)))
'''
    out = attack(tmp_path, body, max_run_dir_mb=4)
    # RLIMIT_FSIZE: the write stops at the cap (Python ignores SIGXFSZ, so it sees EFBIG; C code is killed)
    assert "File too large" in out.failed("big_file")
    assert (out.run_dir / "big.bin").stat().st_size <= 4 << 20


def test_the_harness_cannot_be_traced_or_signalled(tmp_path: Path) -> None:
    me = os.getpid()  # the test process stands for the harness: a host process the run knows the pid of
    body = f'''
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def ptrace():
    if libc.ptrace(16, {me}, 0, 0) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
attempt("ptrace", ptrace)
attempt("kill", lambda: os.kill({me}, signal.SIGTERM))
'''
    out = attack(tmp_path, body)
    assert "No such process" in out.failed("ptrace")
    assert "ProcessLookupError" in out.failed("kill")  # host pids do not exist in the sandbox's pid namespace


def test_no_capabilities_and_no_setuid(tmp_path: Path) -> None:
    body = '''
import ctypes
status = open("/proc/self/status").read()
print("caps:", [l for l in status.splitlines() if l.startswith(("CapEff", "CapPrm", "NoNewPrivs"))])
attempt("cap_eff", lambda: int(status.split("CapEff:")[1].split()[0], 16) or 1 / 0)
attempt("setuid_root", lambda: os.setuid(0))
libc = ctypes.CDLL(None, use_errno=True)
def remount():
    if libc.mount(None, b"/", None, 32 | 4096 | 16384, None) != 0:  # MS_REMOUNT|MS_BIND|... read-write
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
attempt("remount_rw", remount)
def nested_userns():
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER: capabilities again, inside a namespace of its own
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
attempt("nested_userns", nested_userns)
attempt("sudo", lambda: __import__("subprocess").run(["su", "-c", "id"], capture_output=True, timeout=5).returncode == 0 or 1 / 0)
'''
    out = attack(tmp_path, body)
    out.failed("cap_eff")
    assert "Invalid argument" in out.failed("setuid_root")  # uid 0 is not even mapped in the user namespace
    out.failed("remount_rw")
    out.failed("nested_userns")
    out.failed("sudo")


def test_a_forged_metric_after_a_crash_does_not_count(tmp_path: Path) -> None:
    crash = 'print("val_loss: 0.0001")\nprint("peak_memory_gb: 0.1")\nraise SystemExit(1)\n'
    proj = make_project(tmp_path, train=PRELUDE + EPILOGUE, config=sandbox_config(),
                        ideas=[idea("forge a metric, then crash", sub("LR = 0.1", "LR = 0.2\n" + crash))])
    proj.run("--max-trials", "1")
    t1 = proj.trial(1)
    assert t1["status"] == "crash" and t1["reason"] == "exit code 1"
    assert t1["metric"] is None  # the forged line was printed, and ignored
    assert proj.status_json()["best"] == 1.0


def test_a_huge_log_is_capped_and_keeps_its_tail(tmp_path: Path) -> None:
    body = '''
line = "y" * 1023 + "\\n"
for _ in range(20 * 1024):  # 20 MB of output against a 1 MB cap
    sys.stdout.write(line)
'''
    out = attack(tmp_path, body, max_log_mb=1)
    assert out.proc.returncode == 0, out.proc.stderr
    assert "val_loss: 1" in out.proc.stdout  # the summary block at the end survived
    size = (out.run_dir / "run.log").stat().st_size
    assert size < (1 << 20) + 4096
    assert "bytes of output dropped" in out.log
    assert out.sandbox["log_bytes_dropped"] > 18 << 20


def test_symlinks_and_fifos_in_the_run_dir_are_removed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("host file\n")
    body = f'''
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
os.symlink({str(victim)!r}, os.path.join(run_dir, "sandbox.json"))  # the harness writes sandbox.json after the run
os.symlink("/etc/passwd", os.path.join(run_dir, "metrics.json"))
os.mkfifo(os.path.join(run_dir, "evaluate.log"))
os.makedirs(os.path.join(run_dir, "sub"))
os.symlink("/", os.path.join(run_dir, "sub", "root"))
'''
    out = attack(tmp_path, body)
    assert out.proc.returncode == 0, out.proc.stderr
    assert victim.read_text() == "host file\n"  # the harness did not write through the link
    assert not (out.run_dir / "sandbox.json").is_symlink()
    assert sorted(out.sandbox["removed_from_run_dir"]) == ["evaluate.log", "metrics.json", "sandbox.json", "sub/root"]
    assert not (out.run_dir / "metrics.json").is_symlink()


def test_the_run_cannot_replace_its_own_log_or_records(tmp_path: Path) -> None:
    body = '''
log = os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "run.log")
attempt("delete_log", lambda: os.unlink(log))
attempt("rewrite_log", lambda: open(log, "w").write("val_loss: 0.0001\\n"))
attempt("rewrite_diff", lambda: open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "diff.patch"), "w").write("forged"))
'''
    out = attack(tmp_path, body)
    out.failed("delete_log")
    out.failed("rewrite_log")
    out.failed("rewrite_diff")  # the harness's records (diff.patch, brief.md, agent.log) are read-only too
    assert "forged" not in (out.run_dir / "diff.patch").read_text()
    assert "val_loss: 1" in out.proc.stdout
