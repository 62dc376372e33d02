"""Fingerprints of the data a run may read, taken before and after it: a change makes the trial invalid.

Protected files are small and hashed in full (workspace.checksums). Data can be many gigabytes and is
read by every run, so files above HASH_LIMIT are fingerprinted by size and modification time instead
of their content: a run that writes to them changes both (restoring the mtime by hand is not an
accident, and the sandbox backends mount data read-only on top of this check).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from nightlab.workspace import sha256

HASH_LIMIT = 16 << 20  # bytes


def _file(path: Path) -> str:
    st = path.stat()
    if st.st_size <= HASH_LIMIT:
        return sha256(path)
    return f"size={st.st_size} mtime={st.st_mtime_ns}"


def fingerprint(path: Path) -> str:
    """One string for a file or a directory tree (symlinks followed, as a run sees them)."""
    if not path.exists():
        return "missing"
    if not path.is_dir():
        return _file(path)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(path)).encode() + b"\0" + (_file(p) if p.exists() else "missing").encode())
    return h.hexdigest()


def data_fingerprints(base: Path, paths: list[str]) -> dict[str, str]:
    """Fingerprints of data paths as seen from `base` (relative paths) or absolute ones."""
    return {p: fingerprint(Path(p) if Path(p).is_absolute() else base / p) for p in paths}


def clear(path: Path) -> None:
    """Remove whatever a run left at `path` (file, symlink or directory) before nightlab writes there itself.

    The harness writes outside the sandbox: following a symlink the run planted (metrics.json →
    ~/.bashrc) would let sandboxed code choose a file for nightlab to overwrite.
    """
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()
