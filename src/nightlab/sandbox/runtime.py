"""Which OCI runtime a container engine can use here, found by running a tiny container with each.

Measured on a VM with hybrid cgroups and no CAP_SYS_RESOURCE: podman's
default runtime `crun` refuses every container there ("cgroups in hybrid mode not supported"), while
`runc` works; both fail when asked to raise a resource limit past what the engine's own process holds
(podman asks for RLIMIT_NOFILE and RLIMIT_NPROC of 1048576 by default). So each runtime is tried with
limits no higher than the harness's own, then with the engine's defaults, on a root filesystem made of
this machine's `true` (`podman --rootfs`): no image and no registry needed, and an image that lacks
something is never mistaken for a broken runtime.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from nightlab.errors import UsageError
from nightlab.sandbox import rootfs, seccomp

KNOWN = ("crun", "runc", "krun", "runsc")
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/libexec/podman"
NPROC_CEILING = 32768  # podman's documented default; its own process (conmon) held exactly this here
# The engine's own settings and its client's address; nothing else of the caller reaches the engine.
ENGINE_ENV = ("PATH", "HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "TMPDIR", "DOCKER_HOST",
              "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "CONTAINER_HOST",
              "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF")


def engine_env() -> dict[str, str]:
    """The environment an engine command is started with: the caller's secrets never reach the engine."""
    return {k: os.environ[k] for k in ENGINE_ENV if k in os.environ} | {"PATH": os.environ.get("PATH", SEARCH_PATH)}


@dataclass(frozen=True)
class Runtime:
    """The runtime a run uses ('' = the engine's default), its limit flags, and what failed before it."""

    name: str
    ulimits: tuple[str, ...] = ()
    tried: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def engine_flags(self, engine: str) -> list[str]:
        """Flags before `run`: podman takes --runtime globally."""
        return ["--runtime", self.name] if self.name and engine == "podman" else []

    def run_flags(self, engine: str) -> list[str]:
        flags = ["--runtime", self.name] if self.name and engine != "podman" else []
        return flags + [x for u in self.ulimits for x in ("--ulimit", u)]


def own_ulimits() -> tuple[str, ...]:
    """The harness's own open-file limit, and its process limit held under what the engine's process has."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = NPROC_CEILING if nproc == resource.RLIM_INFINITY else min(nproc, NPROC_CEILING)
    soft, hard = (v if v != resource.RLIM_INFINITY else -1 for v in nofile)
    return (f"nofile={soft}:{hard}", f"nproc={nproc}:{nproc}")


def installed(engine: str) -> list[str]:
    """Runtimes to try, the engine's default first, then the others found on this machine."""
    default = ""
    field_ = "{{.Host.OCIRuntime.Name}}" if engine == "podman" else "{{.DefaultRuntime}}"
    try:
        proc = subprocess.run([engine, "info", "--format", field_], capture_output=True,
                              text=True, timeout=30, env=engine_env())
        default = proc.stdout.strip() if proc.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        pass
    found = [n for n in KNOWN if shutil.which(n, path=SEARCH_PATH)]
    return list(dict.fromkeys([d for d in [default] if d] + found))


def _say(stderr: str, code: int) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    said = lines[-1] if lines else f"exit code {code}"
    return said.removeprefix("Error: ").removeprefix("OCI runtime error: ")


@functools.cache
def _probe_files() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    true = shutil.which("true", path=SEARCH_PATH) or "/bin/true"
    files, links = rootfs.plan(rootfs.closure([true]))
    return files, links, {"/usr/local/bin/true": os.path.realpath(true)}


def probe(engine: str, name: str, ulimits: tuple[str, ...]) -> tuple[bool, str]:
    """Run `true` with the flags a run gets (no network, read-only, no capabilities, limits) under runtime `name`."""
    rt = Runtime(name, ulimits)
    with tempfile.TemporaryDirectory(prefix="nightlab-probe-", ignore_cleanup_errors=True) as tmp:
        rootfs.populate(Path(tmp), *_probe_files())  # a few MB: this machine's `true` and its libraries
        args = [engine, *rt.engine_flags(engine), "run", "--rm", "--network", "none", "--read-only",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *security_flags(engine),
                "--user", f"{os.getuid()}:{os.getgid()}", "--init", "--memory", "64m", "--memory-swap", "64m",
                "--pids-limit", "64", *rt.run_flags(engine), "--rootfs", tmp, "/usr/local/bin/true"]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=engine_env(),
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, f"{engine} did not answer: {e}"
    return proc.returncode == 0, _say(proc.stderr, proc.returncode)


def security_flags(engine: str) -> list[str]:
    """podman: its seccomp profile less new namespaces (docker's own default already refuses them)."""
    path = seccomp.profile_path() if engine == "podman" else None
    return ["--security-opt", f"seccomp={path}"] if path else []


def attempt(engine: str, name: str) -> tuple[Runtime | None, str]:
    """`name` with the harness's own limits, else with the engine's defaults; (None, why) if neither runs."""
    first = ""
    for ulimits in (own_ulimits(), ()):
        ok, said = probe(engine, name, ulimits)
        if ok:
            return Runtime(name, ulimits), ""
        first = first or said  # the failure with our limits says most: the engine's defaults fail on limits here
    return None, first


@functools.cache
def choose(engine: str, wanted: str = "") -> Runtime:
    """The first runtime (`wanted`, else each installed one) that runs a container; one-line error if none does."""
    if engine != "podman":  # docker has no --rootfs: its daemon's runtime, or the one named
        return Runtime(wanted)
    candidates = [wanted] if wanted else installed(engine)
    tried: dict[str, str] = {}
    for name in candidates:
        found, why = attempt(engine, name)
        if found:
            return Runtime(found.name, found.ulimits, tried)
        tried[name] = why
    failures = "; ".join(f"{n}: {w}" for n, w in tried.items()) or "no OCI runtime installed"
    if wanted:
        others = [n for n in installed(engine) if n != wanted]
        raise UsageError(f"sandbox {engine}: runtime {wanted!r} does not work here ({failures}); set [sandbox] runtime "
                         f"to another{' (installed: ' + ', '.join(others) + ')' if others else ''}, or leave it "
                         "empty to pick one that works")
    raise UsageError(f"sandbox {engine}: no OCI runtime works here ({failures}); install runc (apt-get install runc), "
                     "which works where crun does not (hybrid cgroups), or name one with [sandbox] runtime")
