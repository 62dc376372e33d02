"""The Sandbox contract, one suite run against every backend that works here: process, bwrap, podman, docker.

Every backend ends a run at its deadline (SIGTERM first, SIGKILL after the grace period), gives it only the
environment nightlab builds plus the `[run] env` names the config lists (never a caller's secret), and ends
the processes of the run's session with it. A backend that declares `isolated` (Sandbox.isolated) is held
to more: the run writes nowhere but its run directory, sees none of the caller's processes (so no secret in
any /proc/*/environ), and even a process that left its session ends with it. `process` declares no
isolation, so those tests skip for it, saying so; a backend that cannot run here skips with its reason.

Each spec is built by runspec.run_spec from a real project, as `nightlab trial` builds it. The host and a
run meet through FIFOs in the run directory, and the host waits for processes to end on their pidfds:
nothing here sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from nightlab.config import load
from nightlab.errors import UsageError
from nightlab.runspec import run_spec
from nightlab.sandbox import Sandbox, load_sandbox, run_env
from nightlab.sandbox.probe import probe_engine
from nightlab.types import RunResult, RunSpec
from nlkit import make_project
from prockit import Watch, host_pids_with, own_pid

# In the caller's environment during each test: none may reach a run, and SOME_VAR only where listed.
SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-CONTRACT-4242", "OPENAI_API_KEY": "sk-CONTRACT-openai",
           "CONTRACT_CANARY": "canary-CONTRACT-7"}
# What a backend itself adds to the environment nightlab builds: bwrap sets PWD as it enters the run's cwd;
# a container engine gives the image's PATH (not the host's) and names of its own.
ADDED_BY = {"bwrap": {"PWD"}, "podman": {"PATH", "HOSTNAME", "TERM", "container"},
            "docker": {"PATH", "HOSTNAME", "TERM", "container"}}
WAIT_S = 60  # a safety net for waits on events that come within seconds (a run's start, its end)


@dataclass
class Backend:
    name: str
    sandbox: Sandbox
    section: dict  # the [sandbox] section a project run by this backend needs

    def claims_isolation(self) -> None:
        if not getattr(self.sandbox, "isolated", False):
            pytest.skip(f"{self.name} does not declare isolated (a plain child process of the harness): "
                        "it does not claim this")


@pytest.fixture(params=["process", "bwrap", "podman", "docker"])
def backend(request: pytest.FixtureRequest) -> Backend:
    name, section = request.param, {"backend": request.param}
    if name == "podman":
        section["image"] = request.getfixturevalue("podman_image")  # skips (fails in CI) where podman does not work
    if name == "docker":
        ok, why = probe_engine("docker")
        # tests/container_image.py builds the suite's image with `podman import`; docker gets none yet
        pytest.skip(f"docker does not work here ({why})" if not ok else "no test image for docker: "
                    "tests/container_image.py imports its image into podman only")
    try:
        sandbox = load_sandbox(name)
    except UsageError as e:  # e.g. "sandbox bwrap does not work here: <bwrap's own words>"
        pytest.skip(str(e))
    return Backend(name, sandbox, section)


@pytest.fixture
def marker() -> str:
    """A word in the run's command line, to find its processes on the host; whatever is left is killed."""
    word = f"contract-{uuid.uuid4().hex[:12]}"
    yield word
    for pid in host_pids_with(word):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(autouse=True)
def caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The harness's own environment: a HOME of this test's, secrets, and a variable a config may list."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name, value in {**SECRETS, "SOME_VAR": "listed"}.items():
        monkeypatch.setenv(name, value)
    return home


def spec_for(tmp_path: Path, backend: Backend, script: str, *args: str, timeout_s: float = WAIT_S,
             listed: tuple[str, ...] = (), worktree: bool = False) -> RunSpec:
    """`python contract.py ARGS` in a real project (tmp_path/proj), its run dir beside it; cwd is the project,
    as for `nightlab trial`, or with `worktree` a git worktree where `nightlab run` keeps a tag's candidate."""
    run = {"command": " ".join(["python", "contract.py", *args]), "budget_s": 1, "timeout_s": timeout_s,
           "grace_s": 0.5, "env": list(listed)}
    proj = make_project(tmp_path, config={"sandbox": backend.section, "run": run}, files={"contract.py": script})
    cwd = proj.dir / ".nightlab" / "t" / "worktree" if worktree else proj.dir
    if worktree:
        proj.git("worktree", "add", "-q", "--detach", str(cwd))
    (tmp_path / "run").mkdir()
    return run_spec(load(proj.dir / "nightlab.toml"), cwd, tmp_path / "run", seed=0, trial=0)


def start(sandbox: Sandbox, spec: RunSpec) -> Future[RunResult]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="contract-run")
    future = pool.submit(sandbox.run, spec)
    pool.shutdown(wait=False)
    return future


def log(result: RunResult) -> str:
    return result.log_path.read_text(errors="replace")


# -- the time budget ------------------------------------------------------------------------------------------
DEAF = '''import os, signal
signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
print("started", flush=True)
if os.fork() == 0:  # a child deaf to SIGTERM, to outlive the run if it can
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    signal.pause()
'''


def test_a_run_past_its_deadline_ends_as_a_timeout(tmp_path: Path, backend: Backend, marker: str) -> None:
    spec = spec_for(tmp_path, backend, DEAF, marker, timeout_s=3)
    result = start(backend.sandbox, spec).result(timeout=WAIT_S)  # raises if the deadline is not kept
    assert result.timed_out and not result.ok and result.reason == "timed out after 3s", (result, log(result))
    assert result.seconds >= 3
    # asked nicely first (the 3 s leave a loaded machine ample time to start python), then killed
    assert "started" in log(result) and "ignoring SIGTERM" in log(result), log(result)
    with Watch(host_pids_with(marker)) as left:
        assert left.survivors(timeout=10) == []


# -- the environment ------------------------------------------------------------------------------------------
ENV = '''import json, os
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "env.json"), "w") as f:
    json.dump(dict(os.environ), f)
'''


def test_the_environment_holds_only_what_nightlab_sets_and_the_config_lists(tmp_path: Path, backend: Backend) -> None:
    spec = spec_for(tmp_path, backend, ENV, listed=("SOME_VAR", "UNSET_VAR"))
    assert spec.env == {"SOME_VAR": "listed"}  # the passthrough: listed and set in the caller
    result = backend.sandbox.run(spec)
    assert result.ok, log(result)
    seen = json.loads((spec.run_dir / "env.json").read_text())
    built = run_env(spec)
    added = ADDED_BY.get(backend.name, set())
    assert set(seen) - set(built) <= added, set(seen) - set(built)
    assert {k: v for k, v in seen.items() if k not in added} == {k: v for k, v in built.items() if k not in added}
    assert seen["SOME_VAR"] == "listed" and "UNSET_VAR" not in seen
    for name, value in SECRETS.items():
        assert name not in seen and value not in json.dumps(seen), name


PROC = '''import json, os
secrets = [s.encode() for s in json.loads(open("secrets.json").read())]
found = []
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    for what in ("environ", "cmdline"):
        try:
            data = open(f"/proc/{pid}/{what}", "rb").read()
        except OSError:
            continue
        found += [f"{pid}/{what}" for s in secrets if s in data]
seen = {"found": found, "pid_namespace": os.readlink("/proc/self/ns/pid")}
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "proc.json"), "w") as f:
    json.dump(seen, f)
'''


def test_no_process_the_run_can_see_holds_a_caller_secret(tmp_path: Path, backend: Backend) -> None:
    backend.claims_isolation()
    spec = spec_for(tmp_path, backend, PROC)
    (spec.cwd / "secrets.json").write_text(json.dumps([*SECRETS, *SECRETS.values()]))  # a file: in no environ
    result = backend.sandbox.run(spec)
    assert result.ok, log(result)
    seen = json.loads((spec.run_dir / "proc.json").read_text())
    assert seen["found"] == []  # not in the run's environment, nor its init's (/proc/1/environ), nor anywhere
    # a pid namespace of its own: the caller's processes, and their environments, do not exist in its /proc
    assert seen["pid_namespace"] != os.readlink("/proc/self/ns/pid")


# -- what the run may write -----------------------------------------------------------------------------------
WRITES = '''import json, os, sys
result = {}
for name, path in json.loads(open("targets.json").read()).items():
    try:
        with open(path, "a") as f:
            f.write("X" * 7)
        result[name] = "written"
    except OSError as e:
        result[name] = f"{type(e).__name__}: {e}"
with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "writes.json"), "w") as f:
    json.dump(result, f)
'''


def test_only_the_run_directory_is_writable(tmp_path: Path, backend: Backend, caller: Path) -> None:
    backend.claims_isolation()
    spec = spec_for(tmp_path, backend, WRITES, worktree=True)
    proj, unique = tmp_path / "proj", uuid.uuid4().hex[:8]
    targets = {"candidate": spec.cwd / "train.py", "new_in_candidate": spec.cwd / f"new-{unique}.txt",
               "project": proj / "train.py", "git": proj / ".git" / "config", "home": caller / f"pwned-{unique}",
               "beside_run_dir": tmp_path / f"beside-{unique}.txt", "etc": Path(f"/etc/nightlab-contract-{unique}"),
               "usr": Path(f"/usr/nightlab-contract-{unique}"), "interpreter": Path(sys.prefix) / f"pwned-{unique}",
               "run_dir": spec.run_dir / "ok.txt"}
    (spec.cwd / "targets.json").write_text(json.dumps({k: str(v) for k, v in targets.items()}))
    before = {k: p.read_bytes() for k, p in targets.items() if p.exists()}
    try:
        result = backend.sandbox.run(spec)
        assert result.ok, log(result)
        said = json.loads((spec.run_dir / "writes.json").read_text())
        after = {k: p.read_bytes() for k, p in targets.items() if p.exists()}
    finally:  # should the backend break its word, nothing stays behind in /etc, /usr or the interpreter
        for name in ("etc", "usr", "interpreter"):
            targets[name].unlink(missing_ok=True)
    assert said["run_dir"] == "written" and after.pop("run_dir") == b"X" * 7
    assert after == before, {k for k in after if after[k] != before.get(k)}  # the host saw no other write
    # Where the run sees the host's own files (its candidate tree, the system) the write itself fails. Under
    # /tmp it may land in the run's private /tmp (podman: the project's path, not mounted, is a plain
    # directory there): what counts is that the host never saw it, as checked above.
    refused = {k: said[k] for k in ("candidate", "new_in_candidate", "etc", "usr")}
    assert all(v != "written" for v in refused.values()), refused


# -- the process tree -----------------------------------------------------------------------------------------
TREE = '''import os, signal, sys
run = os.environ["NIGHTLAB_RUN_DIR"]
if os.fork() == 0:  # the grandchild: deaf to SIGTERM and SIGHUP; with "setsid", out of the run's session
    if sys.argv[2] == "setsid":
        os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with open(os.path.join(run, "ready"), "w") as f:
        f.write(str(os.getpid()))
    while True:
        signal.pause()
with open(os.path.join(run, "go"), "rb", buffering=0) as f:  # until the host has found the grandchild
    f.read(1)
'''


def fifo(path: Path, flags: int) -> int:
    os.mkfifo(path)
    os.chmod(path, 0o666)  # whatever uid the run has inside (a container's user)
    return os.open(path, flags)


def wait_readable(fd: int) -> bytes:
    """What the run writes to `fd`, as soon as it writes it; b"" if nothing comes within WAIT_S."""
    ready, _, _ = select.select([fd], [], [], WAIT_S)
    return os.read(fd, 64) if ready else b""


@pytest.mark.parametrize("escape", ["same-session", "setsid"])
def test_the_process_tree_dies_with_the_run(tmp_path: Path, backend: Backend, marker: str, escape: str) -> None:
    if escape == "setsid":
        backend.claims_isolation()
    spec = spec_for(tmp_path, backend, TREE, marker, escape)
    # the host holds both ends open first, so neither side's open() blocks: only the read waits
    ready = fifo(spec.run_dir / "ready", os.O_RDONLY | os.O_NONBLOCK)
    go = fifo(spec.run_dir / "go", os.O_RDWR)
    try:
        future = start(backend.sandbox, spec)
        said = wait_readable(ready)
        assert said, f"the grandchild never said it was ready: {future.result() if future.done() else 'no run'}"
        pids = host_pids_with(marker)
        grandchild = [p for p in pids if own_pid(p) == int(said)]
        assert len(grandchild) == 1, (said, pids)
        with Watch(pids) as run:
            os.write(go, b"x")  # the run's own process now exits, leaving its grandchild behind
            result = future.result(timeout=WAIT_S)
            assert result.ok, log(result)
            assert run.survivors(timeout=10) == [], f"still running after the run ended: {grandchild}"
    finally:
        os.close(ready)
        os.close(go)
