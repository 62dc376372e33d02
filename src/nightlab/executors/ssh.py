"""SSH: runs on other machines (a GPU box, a few workstations) reached with ssh; nightlab installed on each.

Before a host's first run, the project's files (what git tracks or would track, and the data the trials
see; never the test or selection split) are synced to `<workdir>/<project hash>/base` there with rsync,
which sends only what changed. Each run is one ssh session: the job goes in by value (the edited files
included), the host runs it under its own sandbox exactly as a local slot would (executors/sshjob.py),
and the outcome and run directory come back by value, within the Ray executor's caps (transfer.py).

ssh is run so that nothing of this machine reaches a run: no agent or X11 forwarding, no environment but
ssh's own, the key only on this side. Host keys are checked against `known_hosts` (or ssh's own file) and
an unknown or changed key is refused: never trusted on first use. A session that ends without a result
(the connection dropped, the host died) is `lost`, and the loop runs it again; the host's side stops its
run as soon as its connection is gone, so a cancelled or dropped run leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shlex
import struct
import subprocess
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from nightlab.config import Config, SshHost
from nightlab.errors import UsageError
from nightlab.executors import Job, with_gpus
from nightlab.executors.nodeprobe import report_checks
from nightlab.executors.transfer import project_files, write_back
from nightlab.project import STATE, visible_data
from nightlab.types import RunOutcome, Status

SSH_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "SSH_AUTH_SOCK")


class SshExecutor:
    name = "ssh"

    def __init__(self, cfg: Config, sandbox: str, slots: int) -> None:
        s, per = cfg.executor.ssh, cfg.executor.gpus_per_trial
        if not s.hosts:
            raise UsageError("[executor] name = \"ssh\" needs [[executor.ssh.hosts]] entries (host, slots, gpus)")
        # slot → (host, its slot there); with gpus_per_trial, a host has as many slots as its GPUs allow
        self.places = [(h, i) for h in s.hosts for i in range(min(h.slots, len(h.gpus) // per) if per else h.slots)]
        if slots > len(self.places):
            raise UsageError(f"--slots {slots}: the [executor.ssh] hosts offer {len(self.places)} slots"
                             + (f" of gpus_per_trial {per} GPUs each" if per else ""))
        self.cfg, self.sandbox, self.slots = cfg, sandbox, slots
        root = str(cfg.root.resolve())
        self.base = f"{s.workdir.rstrip('/')}/{hashlib.sha256(root.encode()).hexdigest()[:12]}/base"
        self.synced: set[str] = set()
        self.sync_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="nightlab-ssh")
        self.sessions: dict[str, subprocess.Popen] = {}
        self.cancelled: set[str] = set()
        self.lock = threading.Lock()
        for h in {h.host: h for h in s.hosts}.values():
            self._check(h)

    # -- ssh -------------------------------------------------------------------------------------------
    def ssh_args(self, h: SshHost) -> list[str]:
        s = self.cfg.executor.ssh
        args = ["ssh", "-p", str(h.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if s.known_hosts:
            args += ["-o", f"UserKnownHostsFile={Path(s.known_hosts).expanduser()}"]
        if s.identity_file:
            args += ["-o", "IdentitiesOnly=yes", "-i", str(Path(s.identity_file).expanduser())]
        return args

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k in SSH_ENV}

    def _remote(self, h: SshHost, module: str) -> subprocess.CompletedProcess:
        """`python -m module` on the host, to its end."""
        command = f"{shlex.quote(h.python)} -m {module}"
        return subprocess.run([*self.ssh_args(h), h.host, command], capture_output=True, text=True, timeout=180,
                              env=self._env(), stdin=subprocess.DEVNULL)

    def _check(self, h: SshHost) -> None:
        """The host answers, its key is known, and its python has nightlab: else one clear line now."""
        proc = self._remote(h, "nightlab.executors.sshjob --version")
        if proc.returncode != 0:
            said = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            hint = (" (add its key to known_hosts after checking its fingerprint: nightlab never trusts a new key)"
                    if "host key" in proc.stderr.lower() else "")
            raise UsageError(f"[executor.ssh] host {h.host}: {said}{hint}")

    def _sync(self, h: SshHost) -> None:
        """The project's files to the host's base directory, once per session (rsync sends what changed)."""
        with self.sync_lock:
            if h.host in self.synced:
                return
            root = self.cfg.root.resolve()
            hidden = [Path(p) for p in (STATE, *self.cfg.data.hidden())]
            files = [str(p) for p in project_files(root) if not any(p == x or x in p.parents for x in hidden)]
            data = [p for p in visible_data(self.cfg) if not Path(p).is_absolute() and (root / p).exists()]
            listing = "\n".join([*files, *data]) + "\n"
            mkdir = f"mkdir -p {shlex.quote(self.base)}"
            rsh = shlex.join(self.ssh_args(h))
            proc = subprocess.run(["rsync", "-a", "-r", "-L", "--delete-missing-args", "--files-from=-", "-e", rsh,
                                   "--rsync-path", f"{mkdir} && rsync", f"{root}/", f"{h.host}:{self.base}/"],
                                  input=listing, capture_output=True, text=True, env=self._env(), timeout=3600)
            if proc.returncode != 0:
                raise UsageError(f"[executor.ssh] host {h.host}: copying the project failed: "
                                 f"{(proc.stderr.strip().splitlines() or ['rsync failed'])[-1]}")
            self.synced.add(h.host)

    def doctor(self) -> list[tuple[str, bool, str]]:
        """Each host (reached, its key verified, nightlab there, when this executor was made): what it offers."""
        out = []
        for h in {h.host: h for h in self.cfg.executor.ssh.hosts}.values():
            proc = self._remote(h, "nightlab.executors.nodeprobe")
            if proc.returncode != 0:
                out.append((h.host, False, (proc.stderr.strip().splitlines() or ["no answer"])[-1]))
                continue
            found = json.loads(proc.stdout)
            out.append((h.host, True, f"reached ({found['host']}), host key verified, nightlab with {found['python']}"))
            out += report_checks(found, "host")
        return out

    # -- runs ------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> Future[RunOutcome]:
        return self.pool.submit(self._run, job)

    def _run(self, job: Job) -> RunOutcome:
        h, i = self.places[job.slot]
        per = self.cfg.executor.gpus_per_trial
        if per:
            job = with_gpus(job, ",".join(h.gpus[i * per:(i + 1) * per]))
        self._sync(h)
        command = f"{shlex.quote(h.python)} -m nightlab.executors.sshjob {shlex.quote(self.base)}"
        payload = pickle.dumps((self.cfg, self.sandbox, job))
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen([*self.ssh_args(h), h.host, command], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, env=self._env())
            with self.lock:
                self.sessions[job.id] = proc
                if job.id in self.cancelled:  # cancelled while its host was being synced
                    proc.kill()
            try:
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    proc.stdin.write(struct.pack(">Q", len(payload)) + payload)
                    proc.stdin.flush()  # and kept open: its end tells the host to stop the run
                except BrokenPipeError:
                    pass
                out = proc.stdout.read()
                code = proc.wait()
            finally:
                with self.lock:
                    self.sessions.pop(job.id, None)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if proc.stdin:
                    proc.stdin.close()
            err.seek(0)
            said = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
        return self._outcome(job, h, code, out, said)

    def _outcome(self, job: Job, h: SshHost, code: int, out: bytes, said: list[str]) -> RunOutcome:
        if job.id in self.cancelled:
            return RunOutcome(job=job.id, slot=job.slot, status=Status.LOST, reason="cancelled")
        try:
            result = pickle.loads(out)
        except Exception:  # nothing, or half of it: the session ended early
            why = said[-1][:300] if said else "no answer"
            return RunOutcome(job=job.id, slot=job.slot, status=Status.LOST,
                              reason=f"the ssh session to {h.host} ended (exit {code}) without a result: {why}")
        if result[0] == "error":
            raise result[1]
        _, outcome, files = result
        write_back(job.spec.run_dir, files)
        return outcome

    def cancel(self, job_id: str) -> None:
        with self.lock:
            self.cancelled.add(job_id)
            proc = self.sessions.get(job_id)
            if proc is not None:
                proc.kill()  # the connection ends, and the host stops the run

    def shutdown(self) -> None:
        for job_id in list(self.sessions):
            self.cancel(job_id)
        self.pool.shutdown(wait=True, cancel_futures=True)
