"""nightlab's own reading and writing of a worktree's index (gitindex) against the indexes real git writes: the same
entries back, byte for byte where git's own text is plain, git left to read what is more than plain, a stat match
trusted only for entries older than the index, and the lock taken so that git and nightlab never write at once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nightlab import gitindex
from nightlab.errors import NightlabError
from nightlab.gitobjects import Fallback

from gitkit import WT, edit, make_root, run_git


@pytest.fixture
def wt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_root(tmp_path, monkeypatch) / WT


def index_path(wt: Path) -> Path:
    return Path(run_git("rev-parse", "--path-format=absolute", "--git-path", "index", cwd=wt))


def listing(wt: Path) -> str:
    """Every entry as git reads it: mode, object, stage, path, and the stat data and flags (--debug)."""
    return run_git("ls-files", "--stage", "--debug", cwd=wt)


def test_an_index_git_wrote_is_read_and_written_back_as_git_reads_it(wt: Path) -> None:
    edit(wt)  # a changed, a deleted, a new and a rewritten executable file
    run_git("add", "-A", cwd=wt)
    path = index_path(wt)
    before, data = listing(wt), path.read_bytes()
    index = gitindex.read(path)
    assert sorted(index.entries) == run_git("ls-files", cwd=wt).splitlines()
    assert index.entries["sub/run.sh"].mode == 0o100755 and index.entries["link"].mode == 0o120000
    for name, entry in index.entries.items():
        assert entry.sha == run_git("rev-parse", f":{name}", cwd=wt), name
    assert data.startswith(gitindex.encode(index.entries)[:-20])  # git's own bytes, up to its extensions
    lock = gitindex.Lock(path)
    try:
        lock.commit(index.entries, "test.index.written")
    finally:
        lock.release()
    assert listing(wt) == before
    assert not lock.path.exists()
    run_git("commit", "-qm", "from the index nightlab wrote", cwd=wt)  # git takes it as its own
    assert run_git("status", "--porcelain", cwd=wt) == ""


def test_a_missing_index_is_empty_and_a_damaged_one_is_left_to_git(wt: Path) -> None:
    path = index_path(wt)
    data = bytearray(path.read_bytes())
    path.unlink()
    assert gitindex.read(path).entries == {}
    data[20] ^= 1  # a bit of the first entry: the trailer no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(Fallback, match="not whole"):
        gitindex.read(path)


@pytest.mark.parametrize("how", [
    ["update-index", "--index-version", "4"],  # path compression
    ["update-index", "--skip-worktree", "train.py"],  # an extended flag (git writes version 3 for it)
    ["update-index", "--assume-unchanged", "train.py"],  # the assume-valid flag, in a version 2 index
    ["update-index", "--split-index"],  # a required extension: the entries live in another file
])
def test_an_index_that_is_more_than_plain_files_is_left_to_git(wt: Path, how: list[str]) -> None:
    run_git(*how, cwd=wt)
    with pytest.raises(Fallback):
        gitindex.read(index_path(wt))


def test_a_conflict_stage_is_left_to_git(wt: Path) -> None:
    sha = run_git("rev-parse", ":train.py", cwd=wt)
    proc = subprocess.run(["git", "update-index", "--index-info"], cwd=wt, capture_output=True, text=True,
                          input=f"0 {'0' * 40}\ttrain.py\n100644 {sha} 1\ttrain.py\n100644 {sha} 2\ttrain.py\n")
    assert proc.returncode == 0, proc.stderr
    assert "1\ttrain.py" in listing(wt)
    with pytest.raises(Fallback, match="more than a plain file"):
        gitindex.read(index_path(wt))


def test_a_stat_match_proves_the_content_only_for_an_entry_older_than_the_index(wt: Path) -> None:
    """Times advance in ticks: a file rewritten, same size, in the tick the index was written keeps its stat."""
    f = wt / "train.py"
    os.utime(f, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    st = os.lstat(f)
    entry = gitindex.Entry(0o100644, run_git("rev-parse", ":train.py", cwd=wt), gitindex.stat_data(st))
    assert gitindex.Index({"train.py": entry}, st.st_mtime_ns + 1).unchanged("train.py", st)
    assert not gitindex.Index({"train.py": entry}, st.st_mtime_ns).unchanged("train.py", st)  # racily clean
    os.chmod(f, 0o755)  # the mode and the ctime move; the mtime and size do not
    later = os.lstat(f)
    assert later.st_mtime_ns == st.st_mtime_ns and later.st_size == st.st_size
    assert not gitindex.Index({"train.py": entry}, st.st_mtime_ns + 1).unchanged("train.py", later)
    assert gitindex.file_mode(later) == 0o100755 and gitindex.file_mode(os.lstat(wt / "link")) == 0o120000
    assert gitindex.file_mode(os.lstat(wt / "sub")) is None  # a directory is no entry


def test_the_lock_keeps_git_and_nightlab_from_writing_the_index_at_once(wt: Path) -> None:
    path = index_path(wt)
    first = gitindex.Lock(path)
    with pytest.raises(NightlabError, match="cannot lock the index: .*index.lock exists"):
        gitindex.Lock(path)
    (wt / "train.py").write_text("LR = 0.3\n")
    proc = subprocess.run(["git", "add", "train.py"], cwd=wt, capture_output=True, text=True)
    assert proc.returncode != 0 and "index.lock" in proc.stderr  # git waits for nobody: it refuses
    first.release()
    assert not first.path.exists()
    run_git("add", "train.py", cwd=wt)  # free again
    second = gitindex.Lock(path)
    second.commit(gitindex.read(path).entries, "test.index.written")
    third = gitindex.Lock(path)  # the name is free once the second's index is in place
    second.release()  # must not remove the lock the third holds now
    assert third.path.exists()
    third.release()
    assert not third.path.exists()


def test_the_caches_git_keeps_in_the_index_are_dropped_and_git_does_without_them(wt: Path) -> None:
    """TREE (the trees of the last commit) and UNTR (the untracked files last seen) are optional extensions: an
    index without them is still whole to git, which makes them again when it needs them."""
    (wt / "notes.md").write_text("untracked\n")
    run_git("commit", "-q", "--allow-empty", "-m", "git writes its tree cache", cwd=wt)
    run_git("update-index", "--untracked-cache", cwd=wt)
    run_git("status", "--porcelain", cwd=wt)  # fills the untracked cache
    path = index_path(wt)
    data = path.read_bytes()
    assert b"TREE" in data and b"UNTR" in data
    index = gitindex.read(path)
    lock = gitindex.Lock(path)
    try:
        lock.commit(index.entries, "test.index.written")
    finally:
        lock.release()
    mine = path.read_bytes()
    assert b"TREE" not in mine and b"UNTR" not in mine
    assert gitindex.read(path).entries == index.entries
    assert run_git("status", "--porcelain", cwd=wt) == "?? notes.md"
    (wt / "train.py").write_text("LR = 0.5\n")
    run_git("commit", "-qam", "a commit from the index nightlab wrote", cwd=wt)
    assert run_git("show", "HEAD:train.py", cwd=wt) == "LR = 0.5"
    assert run_git("fsck", "--no-progress", cwd=wt) == ""
