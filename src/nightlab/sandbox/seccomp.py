"""Podman's seccomp profile, less new namespaces: a run cannot create a user namespace of its own.

Measured: under podman's default profile, code in a container with no capabilities could still
`unshare(CLONE_NEWUSER)` and hold every capability inside that namespace (bwrap forbids this with
--disable-userns). Docker's default profile allows `clone` only without namespace flags and answers
`clone3` with ENOSYS (so libc falls back to `clone`, whose flags seccomp can see); the same rules are
applied here to podman's own profile, with `unshare` treated like `clone` (refused with ENOSYS, the
profile's default answer).
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

PROFILES = (Path("/etc/containers/seccomp.json"), Path("/usr/share/containers/seccomp.json"))
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (and CLONE_NEWTIME's bit is CSIGNAL's: left out)
NEW_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
GUARDED = ("clone", "clone3", "unshare")
ENOSYS = 38


def without_new_namespaces(profile: dict) -> dict:
    """`profile` with clone/unshare allowed only without namespace flags, and clone3 answered with ENOSYS."""
    rules = []
    for rule in profile.get("syscalls", []):
        names = [n for n in rule.get("names", []) if n not in GUARDED]
        if names:
            rules.append({**rule, "names": names})
    no_flags = [{"index": 0, "value": NEW_NAMESPACES, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    rules += [{"names": ["clone", "unshare"], "action": "SCMP_ACT_ALLOW", "args": no_flags},
              {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}]
    return {**profile, "syscalls": rules}


@functools.cache
def profile_path() -> str | None:
    """A file holding the engine's default profile so changed (kept for this process); None without one."""
    source = next((p for p in PROFILES if p.is_file()), None)
    if source is None:
        return None
    try:
        profile = json.loads(source.read_text())
    except (OSError, ValueError):
        return None
    private = tempfile.mkdtemp(prefix="nightlab-seccomp-")  # 0700: nobody else can swap the profile
    atexit.register(shutil.rmtree, private, True)
    out = Path(private) / "seccomp.json"
    out.write_text(json.dumps(without_new_namespaces(profile)))
    return str(out)
