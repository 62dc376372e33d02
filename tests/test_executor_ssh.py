"""The SSH executor against a real sshd on loopback, a second user account as the remote host (tests/sshkit.py).

The contract every executor keeps is in test_executors.py (its `ssh` half); these are SSH's own promises: a
dropped connection is `lost` and stops the run on the host, an unknown host key is refused (never trusted on
first use), and nightlab's environment and key never reach a run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from nightlab.config import Config, SshConfig, load
from nightlab.errors import UsageError
from nightlab.executors import Job, load_executor
from nightlab.runspec import run_spec
from nightlab.types import Status
from nlkit import TRAIN, Project, check_consistent, idea, make_project, parallel_project, sub
from prockit import running, wait_for
from sshkit import SshServer, owned_by, ssh_server, uid_of


@pytest.fixture(scope="module")
def ssh_host():
    yield from ssh_server()


def executor(tmp_path: Path, server: SshServer, train: str, **ssh: object):
    proj = make_project(tmp_path, train=train)
    cfg = load(proj.dir / "nightlab.toml")
    cfg.executor.ssh = SshConfig(**(server.config() | ssh))
    return proj, cfg, load_executor("ssh", cfg, "process", 1)


def job(cfg: Config, proj: Project, run: Path) -> Job:
    """Trial 1's run of the project as committed, its train.py by value (as the loop sends it)."""
    return Job(id="1.0a0s1", spec=run_spec(cfg, proj.dir, run, seed=0, trial=1),
               files={"train.py": (proj.dir / "train.py").read_bytes()})


def test_a_dropped_connection_is_lost_and_stops_the_run_on_the_host(tmp_path: Path, ssh_host: SshServer) -> None:
    shared = Path(tempfile.mkdtemp(prefix="nl-shared-", dir="/tmp"))
    shared.chmod(0o777)
    pidfile = shared / "pid"
    train = TRAIN.replace("seed = int", f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
                                        "import time; time.sleep(120)\nseed = int")
    proj, cfg, ex = executor(tmp_path, ssh_host, train)
    try:
        before = set(ssh_host.sessions())
        future = ex.submit(job(cfg, proj, tmp_path / "run"))
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout=180, what="the run to start"))
        session = wait_for(lambda: list(set(ssh_host.sessions()) - before), timeout=60, what="the run's ssh session")
        for p in session:  # the connection drops, as a network failure or a rebooting host drops it
            with contextlib.suppress(ProcessLookupError):  # rsync's session (the project's sync) may end meanwhile
                os.kill(p, signal.SIGKILL)
        out = future.result(timeout=120)
        assert out.status == Status.LOST and "ssh session" in out.reason and "without a result" in out.reason
        wait_for(lambda: not running(pid), timeout=60, what="the run on the host to stop")
    finally:
        ex.shutdown()
        shutil.rmtree(shared, ignore_errors=True)


def test_an_unknown_host_key_is_refused(tmp_path: Path, ssh_host: SshServer) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(UsageError, match="Host key verification failed.*never trusts a new key"):
        executor(tmp_path, ssh_host, TRAIN, known_hosts=str(empty))


def test_nothing_of_nightlabs_environment_reaches_a_run(tmp_path: Path, ssh_host: SshServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The process backend: the run reads what its parent (nightlab's side on the host) was given.
    peek = ('parent = open(f"/proc/{os.getppid()}/environ", "rb").read()\n'
            'print("leaked" if b"sk-test-secret" in parent or b"SSH_AUTH_SOCK" in parent else "clean")\n')
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-secret")
    proj, cfg, ex = executor(tmp_path, ssh_host, TRAIN.replace("seed = int", peek + "seed = int"))
    try:
        out = ex.submit(job(cfg, proj, tmp_path / "run")).result(60)
    finally:
        ex.shutdown()
    assert out.status is None, out.reason
    assert out.values["val_loss"] == pytest.approx(1.04)
    assert "clean" in (tmp_path / "run" / "run.log").read_text()


def on_the_host(proj: Project, server: SshServer) -> dict:
    """The project's nightlab.toml says: executor ssh, on the test's host (2 slots); committed. Its host entry."""
    host = server.host(slots=2)
    hosts = (f'\n[[executor.ssh.hosts]]\nhost = "{host["host"]}"\nport = {host["port"]}\nslots = 2\n'
             f'python = "{host["python"]}"\n')
    proj.write("nightlab.toml", (proj.dir / "nightlab.toml").read_text().replace("[sandbox]", "[executor]\n"
               'name = "ssh"\n\n[sandbox]') + f'\n[executor.ssh]\nidentity_file = "{server.key}"\n'
               f'known_hosts = "{server.known_hosts}"\n' + hosts)
    proj.commit_all("on the ssh host")
    return host


@pytest.mark.slow
def test_nightlab_run_on_an_ssh_host_with_two_slots_records_every_trial_once(tmp_path: Path,
                                                                            ssh_host: SshServer) -> None:
    ideas = [idea("lr 0.2", sub("LR = 0.1", "LR = 0.2")), idea("bonus", sub("BONUS = 0.0", "BONUS = 0.05")),
             idea("slower", sub("SLEEP = 0.4", "SLEEP = 0.6"))]
    proj = parallel_project(tmp_path, *ideas, config={"sandbox": {"backend": "bwrap"}})
    on_the_host(proj, ssh_host)
    proj.run("--slots", "2", "--max-trials", "3", timeout=240)
    rows = check_consistent(proj)
    assert [r["n"] for r in rows] == [0, 1, 2, 3]
    assert all(r["status"] in ("baseline", "keep", "discard") for r in rows), [r["reason"] for r in rows]
    done = [r for r in proj.runs() if r["trial"] > 0]
    assert {r["status"] for r in done} == {"ok"} and {r["slot"] for r in done} == {0, 1}
    assert all('"backend": "bwrap"' in (proj.state() / "runs" / str(n) / "sandbox.json").read_text()
               for n in range(4))  # each ran in the host's sandbox, and its run directory came back
    assert not owned_by(uid_of(ssh_host.user))  # nothing left running on the host


def test_doctor_reaches_each_host_and_says_what_it_offers(tmp_path: Path, ssh_host: SshServer) -> None:
    proj = make_project(tmp_path)
    host = on_the_host(proj, ssh_host)
    proc = proj.nl("doctor", timeout=300, env={**proj.env, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert "executor ssh" in proc.stdout.splitlines()
    assert lines[host["host"]].split()[0] == "ok" and "host key verified" in lines[host["host"]]
    assert lines["host-sandbox"].split()[0] == "ok" and "auto picks bwrap" in lines["host-sandbox"]
    assert "nvidia-smi lists none" in lines["host-gpus"] and "internet" in lines["host-network"]
