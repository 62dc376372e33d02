"""The image the container tests run: this machine's Python with its standard library, and a few tools.

    .venv/bin/python tests/container_image.py      (make test runs it; prints the image's name)

No registry is reachable here, so the image is built from files already on the machine (the
interpreter the suite runs under, the libraries it and its extension modules load, `sh`, `sleep`,
`setsid`, `su`...) and imported with `podman import`. Its tag is a hash of those files' paths, modes
and contents and of this script, so it is rebuilt only when one of them changes; older tags are
removed. The red-team scripts are stdlib-only, so the project's own packages are not copied in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nightlab.sandbox import rootfs
from nightlab.sandbox.runtime import engine_env

REPO = "localhost/nightlab-test-python"
TOOLS = ("sh", "sleep", "setsid", "su", "id", "true", "cat", "env", "ls", "kill")
STDLIB_SKIP = ("site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3")


def _plan() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    exe = os.path.realpath(sys.executable)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    stdlib = Path(sys.base_prefix) / "lib" / version
    skip = (*STDLIB_SKIP, *(p.name for p in stdlib.glob("config-*")))
    modules = [p for p in rootfs.tree(stdlib, skip) if "_tkinter" not in p]
    tools = [t for t in (shutil.which(name, path="/usr/bin:/bin") for name in TOOLS) if t]
    extensions = [p for p in modules if p.endswith(".so")]
    files, links = rootfs.plan(rootfs.closure([exe, *tools, *extensions]) + modules)
    aliases = {f"/usr/local/bin/{n}": exe for n in ("python", "python3", version)}
    return files, links, aliases


def _engine(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=engine_env(), timeout=600, **kw)


def ensure() -> str:
    """The image's name, built and imported first if this machine does not hold it yet."""
    files, links, aliases = _plan()
    extra = Path(__file__).read_text() + repr(sorted(aliases.items()))
    tag = f"{REPO}:{rootfs.content_hash(files, links, extra)[:16]}"
    if _engine("image", "exists", tag).returncode == 0:
        return tag
    with tempfile.TemporaryDirectory(prefix="nightlab-image-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        rootfs.populate(root, files, links, aliases)
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "--owner=0", "--group=0", "-cf", "-", "."],
                               stdout=subprocess.PIPE)
        proc = subprocess.run(["podman", "import", "--change", "ENV=PATH=/usr/local/bin:/usr/bin:/bin",
                               "--change", 'CMD=["python3"]', "-", tag], stdin=tar.stdout, capture_output=True,
                              text=True, env=engine_env(), timeout=600)
        tar.stdout.close()
        if tar.wait() != 0 or proc.returncode != 0:
            raise RuntimeError(f"podman import failed: {proc.stderr.strip()[-500:]}")
    old = _engine("images", "--filter", f"reference={REPO}", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    for stale in [t for t in old if t != tag]:
        _engine("rmi", "--force", stale)
    return tag


if __name__ == "__main__":
    start = time.monotonic()
    name = ensure()
    print(f"{name} ({time.monotonic() - start:.1f}s)")
