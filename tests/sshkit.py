"""A real OpenSSH server for the tests: Debian's sshd on 127.0.0.1 (a free port), a second user account as the remote.

The test makes everything: the user (removed after), a host key and a client key, the authorized_keys and
known_hosts files, sshd's config. sshd runs in the foreground as a child of the test process. The remote
user runs nightlab from this checkout (the folders above it get others' search permission for the test's
length, e.g. mktemp's 0700 folder or /root): the interpreter running the tests if that user can execute it, else
the system's python3 of the same version with this checkout's `src` and site-packages on its path (a .pth
file in the user's site-packages), as nightlab installed on a host would be.

`make test` installs openssh-server and rsync as root (CI is root). Elsewhere the tests skip, saying why; in
CI they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import nightlab
from prockit import procs, running, wait_for

NEEDED = ("sshd", "ssh", "ssh-keygen", "rsync", "useradd", "userdel")


def unavailable() -> str:
    if os.geteuid() != 0:
        return "the SSH tests create a user account and start sshd, which needs root"
    missing = [c for c in NEEDED if shutil.which(c) is None and not Path(f"/usr/sbin/{c}").exists()]
    if missing:
        return f"{', '.join(missing)} missing: as root, `make ssh` installs openssh-server and rsync"
    return ""


@dataclass
class SshServer:
    user: str
    port: int
    python: str
    key: Path
    known_hosts: Path
    dir: Path
    proc: subprocess.Popen

    def host(self, slots: int = 4, gpus: list[str] | None = None) -> dict:
        return {"host": f"{self.user}@127.0.0.1", "port": self.port, "slots": slots,
                "gpus": gpus if gpus is not None else ["0", "1", "2", "3"], "python": self.python}

    def config(self, slots: int = 4) -> dict:
        return {"hosts": [self.host(slots)], "identity_file": str(self.key), "known_hosts": str(self.known_hosts)}

    def sessions(self) -> list[int]:
        """The pids of sshd's per-connection processes for the remote user (killing one drops a connection)."""
        return [pid for pid, (_, cmd) in procs().items() if cmd.startswith(f"sshd: {self.user}")]


def uid_of(user: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def owned_by(uid: int | None) -> list[int]:
    """Live processes whose real user is `uid`."""
    found = []
    for pid in procs():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        line = next((x for x in status.splitlines() if x.startswith("Uid:")), "")
        if uid is not None and line.split()[1:2] == [str(uid)] and running(pid):
            found.append(pid)
    return found


def _as_user(user: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["su", "-s", "/bin/sh", user, "-c", command], capture_output=True, text=True, timeout=120)


def _python_for(user: str, home: Path) -> str:
    """An interpreter `user` can run nightlab with (see the module's docstring)."""
    probe = "-c 'import nightlab.executors.sshjob'"
    if _as_user(user, f"{sys.executable} {probe}").returncode == 0:
        return sys.executable
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    site = subprocess.run([system, "-c", "import site; print(site.getusersitepackages())"], capture_output=True,
                          text=True, env={"HOME": str(home)}).stdout.strip() if Path(system).exists() else ""
    if site:
        Path(site).mkdir(parents=True, exist_ok=True)
        src = Path(nightlab.__file__).resolve().parents[1]
        (Path(site) / "nightlab-tests.pth").write_text(f"{src}\n{sysconfig.get_paths()['purelib']}\n")
        subprocess.run(["chown", "-R", f"{user}:{user}", str(home)], check=True)
        if _as_user(user, f"{system} {probe}").returncode == 0:
            return system
    pytest.fail(f"user {user} can run neither {sys.executable} nor {system} with nightlab")


def let_traverse(paths: list[Path]) -> dict[Path, int]:
    """Give others search (x) permission on every folder above `paths` that lacks it, so that the remote user can
    reach this checkout and its interpreter (a fresh clone under mktemp's 0700 folder, or /root); returns the old
    modes, for `restore`. Search alone: the folders stay unlistable to that user."""
    changed: dict[Path, int] = {}
    for path in paths:  # both where a link is and where it leads (the venv's python and the real one)
        for folder in [*path.absolute().parents, *path.resolve().parents]:
            mode = folder.stat().st_mode
            if folder not in changed and not mode & 0o001:
                changed[folder] = mode & 0o7777
                folder.chmod(mode & 0o7777 | 0o001)
    return changed


def restore(modes: dict[Path, int]) -> None:
    for folder, mode in modes.items():
        folder.chmod(mode)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ssh_server() -> Iterator[SshServer]:
    """For a module-scoped fixture: the server, its user and keys; all removed after."""
    if why := unavailable():
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must run the SSH tests (`make test` installs the packages as root)")
        pytest.skip(why)
    d = Path(tempfile.mkdtemp(prefix="nl-sshd-", dir="/tmp"))
    user = f"nlr{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", user], check=True)
    proc, modes = None, {}
    try:
        modes = let_traverse([Path(nightlab.__file__), Path(sys.executable), Path(sysconfig.get_paths()["purelib"])])
        home = Path(os.path.expanduser(f"~{user}"))
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
        (d / "authorized_keys").write_text((d / "client.pub").read_text())
        (d / "authorized_keys").chmod(0o644)  # sshd reads it as the user
        d.chmod(0o755)
        subprocess.run(["usermod", "-p", "*", user], check=True)  # no password, but not locked: keys only
        port = free_port()
        (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {(d / 'host.pub').read_text()}")
        (d / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nPidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nPasswordAuthentication no\n"
            f"KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin no\nAllowUsers {user}\n"
            "X11Forwarding no\nAllowAgentForwarding no\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        python = _python_for(user, home)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL,
                                stderr=(d / "sshd.log").open("wb"))

        def listening() -> bool:
            assert proc.poll() is None, (d / "sshd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                return True
            except OSError:
                return False

        wait_for(listening, timeout=60, what="sshd to listen")
        yield SshServer(user, port, python, d / "client", d / "known_hosts", d, proc)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        uid = uid_of(user)
        for pid in owned_by(uid):  # the remote user's leftovers, if any (none when every run stopped)
            os.kill(pid, 9)
        subprocess.run(["userdel", "--remove", user], capture_output=True)
        restore(modes)
        shutil.rmtree(d, ignore_errors=True)
