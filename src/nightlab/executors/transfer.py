"""A job's way to another machine and back, for executors whose workers share no directory with the driver.

The worker materialises the candidate in a private temp dir: the project directory's files (what git
tracks or would track there, so not a .venv or caches), the data linked as in a worktree, the editable
files from the job (by value). After the run, the run directory's regular files travel back by value
(smallest first, within caps; a note lists what stayed behind) and the driver writes them into the job's
run dir, never through a link and never over the records the harness wrote there before the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

from nightlab.config import Config
from nightlab.executors import Job
from nightlab.integrity import clear
from nightlab.project import STATE, visible_data
from nightlab.runspec import spec_fields
from nightlab.sandbox.bwrap import HARNESS_RECORDS

MB = 1 << 20
FILE_CAP = 32 * MB  # bigger files stay on the worker (a log: only its tail comes back)
TOTAL_CAP = 64 * MB
SKIPPED_NOTE = "skipped-files.txt"  # written into the run dir when files stayed on the worker


def short_tmp() -> str:
    """A temp dir with a short path: Ray's unix sockets live under it (sun_path holds ~107 bytes)."""
    tmp = tempfile.gettempdir()
    return tmp if len(tmp) <= 24 else "/tmp"


def job_dir() -> Path:
    """A private temp dir for one job; those of workers that died (killed mid-run) are removed first."""
    root = Path(short_tmp()) / f"nightlab-jobs-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    st = root.lstat()
    if root.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RuntimeError(f"{root} is not a private directory of this user; remove it")
    sweep_stale(root)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))


def sweep_stale(root: Path) -> None:
    for d in root.iterdir():
        pid = d.name.split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def on_worker(cfg: Config, job: Job, base: Path) -> Job:
    """The job as a worker runs it: the candidate materialised in `base`/project, a run directory of its own in
    `base`/run, and what the run may see and not see as the worker's copy of the project lays it out."""
    cwd = materialise(cfg, job, base / "project")
    run_dir = base / "run"
    run_dir.mkdir()
    isolation = {k: v for k, v in spec_fields(cfg, cwd).items() if k in ("readonly", "hidden", "masked")}
    return replace(job, spec=replace(job.spec, cwd=cwd, run_dir=run_dir, **isolation))


def materialise(cfg: Config, job: Job, cwd: Path) -> Path:
    """The candidate at `cwd`: the project's files (data linked, as in a worktree), then the job's editable files."""
    root = cfg.root.resolve()
    data = [p for p in visible_data(cfg) if not Path(p).is_absolute()]
    skip = [Path(p) for p in (".git", STATE, *data, *cfg.data.hidden())]
    cwd.mkdir()
    for rel in project_files(root):
        if any(rel == s or s in rel.parents for s in skip):
            continue
        src, dst = root / rel, cwd / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        elif src.is_dir():  # a submodule
            shutil.copytree(src, dst, symlinks=True)
        elif src.is_file():
            shutil.copy2(src, dst)
    for link in data:
        src, dst = root / link, cwd / link
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())
    for name in cfg.project.editable:  # exactly the job's editable files: one it lacks was deleted
        if name not in job.files and (cwd / name).is_file():
            (cwd / name).unlink()
    for name, text in job.files.items():
        dst = cwd / safe_relative(name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        clear(dst)
        dst.write_bytes(text)
    return cwd


def project_files(root: Path) -> list[Path]:
    """What a worktree would hold: the files git tracks or would track (not ignored ones, e.g. a .venv); in a
    copy of those that is no repository (an SSH host's), every file."""
    if not (root / ".git").exists():
        return [p.relative_to(root) for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()]
    proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                          capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{root}: git ls-files failed on this Ray node: {proc.stderr.decode(errors='replace')}")
    return [Path(p) for p in dict.fromkeys(proc.stdout.decode(errors="surrogateescape").split("\0")) if p]


def safe_relative(name: str) -> Path:
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"not a path inside the project: {name!r}")
    return path


def collect(run_dir: Path) -> dict[str, bytes]:
    """The run directory's regular files by value, smallest first, within FILE_CAP each and TOTAL_CAP in all."""
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(run_dir):  # symlinks are not followed
        for name in [*filenames, *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(run_dir))
            st = path.lstat()
            if not path.is_file() or path.is_symlink():
                skipped.append(f"{rel}: not a regular file")
            else:
                found.append((st.st_size, rel, path))
    files, total = {}, 0
    for size, rel, path in sorted(found):
        take = min(size, FILE_CAP) if rel.endswith(".log") else size  # a log too big to send: its tail
        if take > FILE_CAP or total + take > TOTAL_CAP:
            skipped.append(f"{rel}: {size / MB:.1f} MB "
                           f"(limits: {FILE_CAP // MB} MB a file, {TOTAL_CAP // MB} MB in all)")
            continue
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            f.seek(size - take)
            files[rel] = f.read(take)
        total += take
        if take < size:
            skipped.append(f"{rel}: only its last {take // MB} MB came back ({size / MB:.1f} MB)")
    if skipped:
        files[SKIPPED_NOTE] = ("files of this run left on the Ray worker:\n" + "\n".join(skipped) + "\n").encode()
    return files


def write_back(run_dir: Path, files: dict[str, bytes]) -> None:
    """The worker's run directory files into `run_dir`, never through a link and never over the harness's records."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        rel = safe_relative(name)
        if str(rel) in HARNESS_RECORDS:
            continue
        target = run_dir
        for part in rel.parts[:-1]:
            target = target / part
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                clear(target)
            target.mkdir(exist_ok=True)
        target = target / rel.parts[-1]
        clear(target)
        target.write_bytes(data)
