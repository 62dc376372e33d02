"""Red team under podman: the attacks of test_escape.py and test_resources.py that apply to a container.

Each test runs a hostile train.py through the real `nightlab trial` under the real podman (its runtime
picked by the backend: runc here, where crun fails) with the suite's local image, and asserts the
outcome from the host. The escape attempts share one run, to keep the suite quick; docs/security.md
lists each attack with its outcome under bwrap and under podman.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

from rtkit import FORK_BOMB, SECRET, attack, forked, sandbox_config

from nlkit import CLI, make_project
from prockit import host_pids_with

ESCAPES = '''
import ctypes, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def _errno(rc):
    if rc != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
attempt("tcp", lambda: socket.create_connection(("1.1.1.1", 53), timeout=3))
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53)))
attempt("dns", lambda: socket.getaddrinfo("pypi.org", 443))
attempt("loopback", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=3))
attempt("unix", lambda: socket.socket(socket.AF_UNIX).connect({sock!r}))
for name, path in [("home", {home!r}), ("project", os.path.abspath("train.py")), ("git", os.path.abspath(".git/config")),
                   ("protected", os.path.abspath("prepare.py")), ("etc", "/etc/nightlab-pwned"),
                   ("usr", "/usr/nightlab-pwned"), ("interpreter", os.path.join(sys.prefix, "pwned"))]:
    attempt("write_" + name, lambda: open(path, "a").write("X" * 7))
attempt("write_run_dir", lambda: open(os.path.join(run_dir, "ok.txt"), "w").write("ok"))
attempt("ssh_key", lambda: open({key!r}).read())
attempt("shadow", lambda: open("/etc/shadow").read() or 1 / 0)
attempt("test_split", lambda: open("data/test.txt").read() or 1 / 0)
attempt("test_split_abs", lambda: open(os.path.abspath("data/test.txt")).read() or 1 / 0)
attempt("train", lambda: open("data/train.txt").read())
print("ENV " + json.dumps(sorted(os.environ)), flush=True)
def scan():
    found = []
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        for what in ("environ", "cmdline"):
            try:
                data = open(f"/proc/{{pid}}/{{what}}", "rb").read()
            except OSError:
                continue
            if b"REDTEAM" in data or b"API_KEY" in data:
                found.append(f"{{pid}}/{{what}}")
    return found or 1 / 0
attempt("proc_environ", scan)
attempt("pids_visible", lambda: 1 / 0 if len([p for p in os.listdir("/proc") if p.isdigit()]) < 5 else "host pids")
attempt("ptrace", lambda: _errno(libc.ptrace(16, {me}, 0, 0)))
attempt("kill", lambda: os.kill({me}, signal.SIGTERM))
status = open("/proc/self/status").read()
print("STATUS " + json.dumps([l for l in status.splitlines() if l.startswith(("Uid", "CapEff", "CapPrm", "NoNewPrivs"))]))
attempt("cap_eff", lambda: int(status.split("CapEff:")[1].split()[0], 16) or 1 / 0)
attempt("setuid_other", lambda: os.setuid(1000))
attempt("remount_rw", lambda: _errno(libc.mount(None, b"/", None, 32 | 4096 | 16384, None)))
attempt("nested_userns", lambda: _errno(libc.unshare(0x10000000)))
attempt("sudo", lambda: subprocess.run(["su", "-c", "id"], capture_output=True, timeout=5).returncode == 0 or 1 / 0)
log = os.path.join(run_dir, "run.log")
attempt("delete_log", lambda: os.unlink(log))
attempt("rewrite_log", lambda: open(log, "w").write("val_loss: 0.0001\\n"))
attempt("rewrite_diff", lambda: open(os.path.join(run_dir, "diff.patch"), "w").write("forged"))
os.symlink({victim!r}, os.path.join(run_dir, "sandbox.json"))  # the harness writes sandbox.json after the run
os.symlink("/etc/passwd", os.path.join(run_dir, "metrics.json"))
os.mkfifo(os.path.join(run_dir, "evaluate.log"))
os.makedirs(os.path.join(run_dir, "sub"))
os.symlink("/", os.path.join(run_dir, "sub", "root"))
subprocess.Popen(["setsid", "sh", "-c", "trap '' TERM HUP; sleep 120 # {marker}"], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
line = "y" * 1023 + "\\n"
for _ in range(20 * 1024):  # 20 MB of output against a 1 MB cap
    sys.stdout.write(line)
'''


def podman(image: str, **limits: object) -> dict:
    return {"backend": "podman", "image": image, **limits}


class _Loopback:
    """A server on the host's 127.0.0.1 that records any connection it accepts."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.accepted: list[object] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                self.accepted.append(self.server.accept())
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()


def test_escapes_fail_under_podman(tmp_path: Path, podman_image: str) -> None:
    home, marker = tmp_path / "home", f"daemon-{uuid.uuid4().hex[:8]}"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (tmp_path / "sockets").mkdir()
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "sockets" / "agent.sock"))
    unix.listen()
    victim = tmp_path / "victim.txt"
    victim.write_text("host file\n")
    loop = _Loopback()
    body = ESCAPES.format(port=loop.port, sock=str(tmp_path / "sockets" / "agent.sock"), home=str(home / "pwned"),
                          key=str(home / ".ssh" / "id_ed25519"), me=os.getpid(), victim=str(victim), marker=marker)
    files = {"data/train.txt": "train rows\n", "data/test.txt": "secret labels\n"}
    try:
        out = attack(tmp_path, body, files=files, max_log_mb=1,
                     sections={"data": {"train": ["data/train.txt"], "test": ["data/test.txt"]}}, **podman(podman_image))
    finally:
        loop.close()
        unix.close()
    assert out.proc.returncode == 0, out.proc.stderr
    assert out.sandbox["engine"] == "podman" and out.sandbox["runtime"]
    assert "unreachable" in out.failed("tcp").lower() and "unreachable" in out.failed("udp").lower()
    assert "gaierror" in out.failed("dns")
    assert "ConnectionRefused" in out.failed("loopback") and loop.accepted == []
    assert "FileNotFoundError" in out.failed("unix")
    for name in ("home", "project", "git", "protected", "etc", "usr", "interpreter"):
        out.failed("write_" + name)
    assert out.attempts()["write_run_dir"][0] and (out.run_dir / "ok.txt").read_text() == "ok"
    assert not (home / "pwned").exists() and "XXXXXXX" not in (out.proj.dir / "prepare.py").read_text()
    assert "XXXXXXX" not in (out.proj.dir / ".git" / "config").read_text()
    assert "FileNotFoundError" in out.failed("ssh_key")
    out.failed("shadow")
    out.failed("test_split")
    out.failed("test_split_abs")
    assert out.attempts()["train"] == (True, "'train rows\\n'")
    env = set(json.loads(out.log.split("ENV ", 1)[1].splitlines()[0]))
    listed = {"HOME", "LANG", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "NIGHTLAB_RUN_DIR", "NIGHTLAB_BUDGET_S",
              "NIGHTLAB_SEED", "NIGHTLAB_TRIAL"}
    assert env - listed == {"PATH", "HOSTNAME", "TERM", "container"}  # the image's PATH and podman's own three
    out.failed("proc_environ")
    out.failed("pids_visible")
    assert "No such process" in out.failed("ptrace") and "ProcessLookupError" in out.failed("kill")
    out.failed("cap_eff")
    assert "Operation not permitted" in out.failed("setuid_other")
    out.failed("remount_rw")
    out.failed("nested_userns")
    out.failed("sudo")
    status = json.loads(out.log.split("STATUS ", 1)[1].splitlines()[0])
    assert "NoNewPrivs:\t1" in status and "CapEff:\t0000000000000000" in status
    for name in ("delete_log", "rewrite_log", "rewrite_diff"):
        out.failed(name)
    assert "forged" not in (out.run_dir / "diff.patch").read_text()
    assert victim.read_text() == "host file\n"
    assert sorted(out.sandbox["removed_from_run_dir"]) == ["evaluate.log", "metrics.json", "sandbox.json", "sub/root"]
    assert (out.run_dir / "run.log").stat().st_size < (1 << 20) + 4096 and out.sandbox["log_bytes_dropped"] > 18 << 20
    assert "val_loss: 1" in out.proc.stdout  # the summary block after 20 MB of output survived
    assert SECRET not in out.log and "PRIVATE KEY" not in out.log and "secret labels" not in out.log
    assert host_pids_with(marker) == []  # the setsid daemon died with the container


def test_fork_bomb_is_contained_by_the_pids_limit(tmp_path: Path, podman_image: str) -> None:
    marker = f"bomb-{uuid.uuid4().hex[:8]}"
    body = FORK_BOMB.format(marker=marker)
    out = attack(tmp_path, body, **podman(podman_image, max_pids=64))
    said = out.failed("fork_bomb")
    assert "BlockingIOError" in said or "Resource temporarily" in said
    assert forked(out.log) < 64
    assert host_pids_with(marker) == []


def test_memory_bomb_is_killed_and_reported(tmp_path: Path, podman_image: str) -> None:
    body = 'blocks = [bytearray(64 << 20) for _ in range(64)]  # 4 GiB against 256 MiB\nprint("survived")\n'
    out = attack(tmp_path, body, **podman(podman_image, memory_gb=0.25))
    assert out.proc.returncode == 1 and "crash: out of memory" in out.proc.stderr
    assert "survived" not in out.log
    assert out.sandbox["exit_reason"] == "out of memory" and out.sandbox["oom_killed"] is True


def test_filling_the_run_dir_is_stopped_and_one_file_is_capped(tmp_path: Path, podman_image: str) -> None:
    body = '''
run_dir = os.environ["NIGHTLAB_RUN_DIR"]
attempt("big_file", lambda: open(os.path.join(run_dir, "big.bin"), "wb").write(b"x" * (64 << 20)))
for i in range(2000):  # 2 GB in 1 MB files, against an 8 MB cap
    with open(os.path.join(run_dir, f"fill-{i}.bin"), "wb") as f:
        f.write(b"x" * (1 << 20))
    time.sleep(0.002)
print("filled the disk")
'''
    out = attack(tmp_path, body, **podman(podman_image, max_run_dir_mb=8))
    assert "File too large" in out.failed("big_file")
    assert (out.run_dir / "big.bin").stat().st_size <= 8 << 20
    assert out.proc.returncode == 1 and "run directory exceeded 8 MB" in out.proc.stderr
    assert "filled the disk" not in out.log
    assert sum(p.stat().st_size for p in out.run_dir.iterdir()) < 600 << 20


def test_a_killed_harness_leaves_no_container_running(tmp_path: Path, podman_image: str) -> None:
    """kill -9 of nightlab: podman's conmon outlives it, so the container carries its own deadline (--timeout)."""
    marker = f"orphan-{uuid.uuid4().hex[:8]}"
    train = f"import subprocess, time\nsubprocess.Popen(['sh', '-c', 'sleep 300 # {marker}'])\ntime.sleep(300)\n"
    cfg = {"sandbox": podman(podman_image), "run": {"timeout_s": 4, "grace_s": 0.5}}
    proj = make_project(tmp_path, train=train, config=cfg)
    harness = subprocess.Popen([*CLI, "trial"], cwd=proj.dir, env=proj.env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not host_pids_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert host_pids_with(marker), "the run never started"
        harness.send_signal(signal.SIGKILL)
        harness.wait(timeout=10)
        deadline = time.monotonic() + 60  # the backstop is the run's deadline plus grace plus 10 s
        while host_pids_with(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert host_pids_with(marker) == []
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
        for pid in host_pids_with(marker):
            os.kill(pid, signal.SIGKILL)


def test_a_runtime_that_fails_is_one_line_naming_it(tmp_path: Path, podman_image: str) -> None:
    runtime = "/bin/false"  # an OCI runtime that fails every container, on any machine
    proj = make_project(tmp_path, config=sandbox_config() | {"sandbox": podman(podman_image, runtime=runtime)})
    proc = proj.nl("trial")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and runtime in lines[0] and "[sandbox] runtime" in lines[0], proc.stderr
