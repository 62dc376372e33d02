"""Red team, part 1: a hostile train.py tries to reach the network, the host's files and secrets.

Each test runs one script through the real `nightlab trial` under the real bwrap backend and asserts
the outcome from the host. docs/security.md has the table of these attacks and outcomes.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from nlkit import idea, make_project, sub
from rtkit import EPILOGUE, PRELUDE, attack, sandbox_config


def test_tcp_egress_is_blocked(tmp_path: Path) -> None:
    out = attack(tmp_path, 'attempt("tcp", lambda: socket.create_connection(("1.1.1.1", 53), timeout=3))\n')
    assert "unreachable" in out.failed("tcp").lower()
    assert out.proc.returncode == 0  # the run itself finishes normally: only the attack failed


def test_udp_egress_is_blocked(tmp_path: Path) -> None:
    out = attack(tmp_path, 'attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53)))\n')
    assert "unreachable" in out.failed("udp").lower()


def test_dns_is_blocked(tmp_path: Path) -> None:
    out = attack(tmp_path, 'attempt("dns", lambda: socket.getaddrinfo("pypi.org", 443))\n')
    assert "gaierror" in out.failed("dns")


def test_a_service_on_the_host_loopback_is_unreachable(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    port = server.getsockname()[1]
    try:
        out = attack(tmp_path, f'attempt("loopback", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=3))\n')
    finally:
        stop.set()
        t.join()
        server.close()
    assert "ConnectionRefused" in out.failed("loopback")  # the sandbox has its own, empty loopback
    assert accepted == []


def test_a_unix_socket_the_host_owns_is_unreachable(tmp_path: Path) -> None:
    sock_dir = tmp_path / "agent-sockets"
    sock_dir.mkdir()
    path = sock_dir / "ssh-agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    try:
        out = attack(tmp_path, 'attempt("unix", lambda: socket.socket(socket.AF_UNIX).connect(%r))\n' % str(path))
    finally:
        server.close()
    assert "FileNotFoundError" in out.failed("unix")


def test_home_secrets_are_hidden(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    body = f'''
attempt("ssh_key", lambda: open({str(home / ".ssh" / "id_ed25519")!r}).read())
attempt("root_home", lambda: os.listdir("/root"))
attempt("shadow", lambda: open("/etc/shadow").read() or 1 / 0)
'''
    out = attack(tmp_path, body)
    assert "FileNotFoundError" in out.failed("ssh_key")
    ok, listing = out.attempts()["root_home"]
    # a tmpfs where root's home was: at most the mount points of an interpreter installed under it (pyenv)
    assert ok and ".ssh" not in listing and ".bashrc" not in listing, listing
    out.failed("shadow")  # /etc/shadow reads as empty inside
    assert "PRIVATE KEY" not in out.log


def test_the_test_split_is_not_readable_in_a_trial(tmp_path: Path) -> None:
    body = '''
attempt("relative", lambda: open("data/test.txt").read() or 1 / 0)
attempt("absolute", lambda: open(os.path.abspath("data/test.txt")).read() or 1 / 0)
attempt("train", lambda: open("data/train.txt").read())
'''
    proj = make_project(tmp_path, train=PRELUDE + body + EPILOGUE,
                        config=sandbox_config() | {"data": {"train": ["data/train.txt"], "test": ["data/test.txt"]}})
    proj.write("data/test.txt", "secret labels\n")
    proj.write("data/train.txt", "train rows\n")
    proc = proj.nl("trial", "--record", timeout=90)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (proj.dir / ".nightlab" / "manual").iterdir()
    log = (run_dir / "run.log").read_text()
    assert "ATTEMPT relative FAILED" in log and "ATTEMPT absolute FAILED" in log
    assert "ATTEMPT train OK 'train rows\\n'" in log
    assert "secret labels" not in log


def test_the_test_split_and_the_ledger_are_out_of_reach_in_the_loop(tmp_path: Path) -> None:
    """In `nightlab run` the project directory is hidden: the test split is absent, the ledger unwritable."""
    body = '''
root = os.path.abspath("../../..")  # worktree -> .nightlab/<tag> -> .nightlab -> the project
attempt("test_split", lambda: open(os.path.join(root, "data/test.txt")).read())
attempt("ledger", lambda: open("../ledger.sqlite", "r+b").write(b"garbage"))
attempt("results", lambda: open("../results.tsv", "a").write("forged"))
attempt("prepare", lambda: open("prepare.py", "a").write("# tampered"))
attempt("data", lambda: open("data/train.txt", "a").write("poison"))
'''
    cfg = sandbox_config() | {"data": {"train": ["data/train.txt"], "test": ["data/test.txt"]}}
    proj = make_project(tmp_path, train=PRELUDE + body + EPILOGUE, config=cfg,
                        ideas=[idea("lower LR", sub("LR = 0.1", "LR = 0.05"))])
    proj.write("data/test.txt", "secret labels\n")
    proj.write("data/train.txt", "train rows\n")
    proj.run("--max-trials", "1")
    log = (proj.state() / "runs" / "1" / "run.log").read_text()
    for name in ("test_split", "ledger", "results", "prepare", "data"):
        assert f"ATTEMPT {name} FAILED" in log, log
    assert "secret labels" not in log
    assert [r["status"] for r in proj.ledger()] == ["baseline", "discard"]  # the ledger is intact and complete
    assert "forged" not in (proj.state() / "results.tsv").read_text()
    assert (proj.dir / "prepare.py").read_text() == "print(\"prepared\")\n"
    assert (proj.dir / "data" / "train.txt").read_text() == "train rows\n"
