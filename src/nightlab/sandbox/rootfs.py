"""A root filesystem made of files already on this machine: some programs and the libraries they load.

No image registry is needed: `podman --rootfs DIR` runs such a directory as a container (how the
runtime probe checks an OCI runtime without any image), and a tarball of it becomes an image with
`podman import` (how the test suite builds the image its container runs use). Every file keeps its
host path, so an interpreter finds its standard library and the libraries its RUNPATH names; the
host's directory symlinks (merged /usr: /lib -> usr/lib) are recreated, and files are only ever
written at their resolved paths, never through a link that could point back to the host.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")
BASE_DIRS = ("dev", "proc", "sys", "etc", "tmp", "run", "root", "home", "var/tmp", "usr/local/bin")
ETC = {"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
       "etc/group": "root:x:0:\nnogroup:x:65534:\n"}


def libraries(binary: str) -> list[str]:
    """The shared libraries `binary` loads, as ldd resolves them (none for a static binary)."""
    try:
        proc = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30, env={"LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [m.group(1) for m in map(LDD_PATH.search, proc.stdout.splitlines()) if m and "not found" not in m.group(0)]


def closure(binaries: Iterable[str]) -> list[str]:
    """The binaries and every library they load, each once."""
    out: dict[str, None] = {}
    for b in binaries:
        out[b] = None
        out.update(dict.fromkeys(libraries(b)))
    return list(out)


def tree(top: Path, skip: Iterable[str] = ()) -> list[str]:
    """Every file under `top`, less the top-level entries named in `skip`."""
    skip = set(skip)
    found = []
    for root, dirs, files in os.walk(top):
        if Path(root) == top:
            dirs[:] = [d for d in dirs if d not in skip]
            files = [f for f in files if f not in skip]
        found += [os.path.join(root, f) for f in files]
    return sorted(found)


def plan(paths: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(files, links): each file's resolved path, and the symlinks on the way to it, as on the host."""
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    for path in paths:
        real = os.path.realpath(path)
        if not os.path.isfile(real):
            continue
        files[real] = real
        here = "/"
        for part in Path(path).parts[1:]:  # each symlinked component, e.g. /lib -> usr/lib
            here = os.path.join(here, part)
            if os.path.islink(here):
                links[here] = os.readlink(here)
                here = os.path.realpath(here)
    return files, links


def content_hash(files: dict[str, str], links: dict[str, str], extra: str = "") -> str:
    """A hash of what the root filesystem would hold: paths, modes, contents and link targets."""
    h = hashlib.sha256(extra.encode())
    for dest in sorted(files):
        h.update(f"F {dest} {os.stat(files[dest]).st_mode & 0o7777:o}\n".encode())
        with open(files[dest], "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    for link in sorted(links):
        h.update(f"L {link} {links[link]}\n".encode())
    return h.hexdigest()


def populate(root: Path, files: dict[str, str], links: dict[str, str], aliases: dict[str, str] | None = None) -> None:
    """Write the root filesystem under `root`: base directories, files, host symlinks, `aliases` (path -> target)."""
    root = root.resolve()
    for d in BASE_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    for rel, text in ETC.items():
        (root / rel).write_text(text)
    for dest, src in files.items():
        target = root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=True)
    for link, target in sorted({**links, **(aliases or {})}.items()):
        where = root / link.lstrip("/")
        # written only where the parent is a real directory of ours: a link never leads the write to the host
        if not os.path.lexists(where) and where.parent.resolve() == where.parent.absolute():
            where.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, where)
