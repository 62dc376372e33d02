"""nightlab's own git writes (gitobjects, gitrefs, gitcommit) against real git: the same commits, refs and reflogs
as git's commands make, read back by git, fsck clean, packed refs and objects honoured, and a kill at any step
leaves a repository git is content with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nightlab import repair
from nightlab.errors import NightlabError
from nightlab.gitcommit import Repo, cleaned
from nightlab.gitobjects import Objects

from gitkit import MESSAGE, PATHS, WT, by_git, edit, make_root, run_git

@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_root(tmp_path, monkeypatch)


def last_reflogs(common: Path) -> tuple[str, str]:
    """The last line of the branch's reflog and of the worktree HEAD's."""
    logs = common / "logs" / "refs" / "heads" / "nightlab" / "x", common / "worktrees" / "worktree" / "logs" / "HEAD"
    return logs[0].read_text().splitlines()[-1], logs[1].read_text().splitlines()[-1]


def test_a_commit_is_the_one_git_commit_makes(root: Path) -> None:
    wt, common = root / WT, root / ".git"
    edit(wt)
    repo = Repo(wt, root)
    assert repo.fast, repo.why_slow
    mine = repo.commit(PATHS, MESSAGE)
    logs = last_reflogs(common)
    assert run_git("rev-parse", "nightlab/x", cwd=root) == mine
    assert run_git("fsck", "--strict", "--no-dangling", cwd=root) == ""
    assert run_git("cat-file", "-p", f"{mine}:sub/new.md", cwd=root) == "notes"

    run_git("reset", "--hard", "-q", "HEAD~1", cwd=wt)
    edit(wt)
    assert by_git(wt) == mine  # same tree (modes, nesting, a removed directory), identity, date, clean message
    assert last_reflogs(common) == logs


def test_an_amend_is_the_one_commit_tree_makes(root: Path) -> None:
    wt = root / WT
    edit(wt)
    repo = Repo(wt, root)
    first = repo.commit(PATHS, MESSAGE)
    message = "trial 1: LR up\n\nstatus: keep"
    mine = repo.amend(first, message)
    theirs = run_git("commit-tree", f"{first}^{{tree}}", "-p", f"{first}^", "-m", message, cwd=wt)
    assert mine == theirs
    assert run_git("rev-parse", "HEAD", cwd=wt) == first  # HEAD does not move


def test_objects_written_are_read_back_by_git(root: Path) -> None:
    objects = Objects(root / ".git")
    blob = objects.write(b"blob", b"hello\n")
    assert run_git("cat-file", "-p", blob, cwd=root) == "hello"
    assert objects.write(b"blob", b"hello\n") == blob  # already there: the same name, written once
    assert not list((root / ".git" / "objects").rglob("tmp_obj_*"))
    assert objects.read(blob) == (b"blob", b"hello\n")
    assert run_git("fsck", "--strict", cwd=root).count("dangling blob") == 1


def test_refs_are_seen_by_git_and_packed_ones_honoured(root: Path) -> None:
    wt = root / WT
    repo = Repo(wt, root)
    head = repo.head()
    repo.set_ref("refs/nightlab/x/trial-0", head)
    assert run_git("rev-parse", "refs/nightlab/x/trial-0", cwd=root) == head
    run_git("pack-refs", "--all", "--prune", cwd=root)
    assert not (root / ".git" / "refs" / "heads" / "nightlab" / "x").exists()  # the branch lives in packed-refs
    assert Repo(wt, root).head() == head
    edit(wt)
    new = Repo(wt, root).commit(PATHS, "trial 1")  # the old value is checked against the packed one
    assert run_git("rev-parse", "nightlab/x", cwd=root) == new
    assert run_git("rev-parse", "nightlab/x~1", cwd=root) == head


def test_a_commit_on_packed_objects(root: Path) -> None:
    wt = root / WT
    run_git("gc", "-q", "--prune=now", cwd=root)
    assert not [p for p in (root / ".git" / "objects").glob("??") if any(p.iterdir())]  # nothing loose
    repo = Repo(wt, root)
    head = repo.head()
    assert repo.blob(head, "sub/deep/model.py") == b"WIDTH = 4\n"  # read through git
    assert repo.blob(head, "sub/missing.py") is None
    edit(wt)
    new = repo.commit(PATHS, "trial 1")
    assert run_git("fsck", "--strict", "--no-dangling", cwd=root) == ""
    assert run_git("diff", "--name-only", head, new, cwd=root).split() == ["sub/deep/model.py", "sub/new.md",
                                                                           "sub/run.sh", "train.py"]


def test_a_ref_another_writer_holds_is_left_to_it(root: Path) -> None:
    wt = root / WT
    lock = root / ".git" / "refs" / "heads" / "nightlab" / "x.lock"
    lock.write_text("")
    edit(wt)
    repo = Repo(wt, root)
    before = repo.head()
    with pytest.raises(NightlabError, match="cannot lock ref refs/heads/nightlab/x"):
        repo.commit(PATHS, "trial 1")
    assert lock.exists() and not (root / ".git" / "worktrees" / "worktree" / "HEAD.lock").exists()
    assert run_git("rev-parse", "nightlab/x", cwd=root) == before


KILLED = """
import sys
from pathlib import Path
from nightlab.gitcommit import Repo
Repo(Path(sys.argv[1]), Path(sys.argv[2])).commit(sys.argv[3:], "trial 1")
"""


@pytest.mark.parametrize("point", ["git.commit.written", "git.commit.locked"])
def test_killed_between_the_objects_and_the_ref(root: Path, point: str) -> None:
    wt = root / WT
    before = run_git("rev-parse", "nightlab/x", cwd=root)
    edit(wt)
    proc = subprocess.run([sys.executable, "-c", KILLED, str(wt), str(root), *PATHS], start_new_session=True,
                          env={**os.environ, "NIGHTLAB_CRASH_AT": point}, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert run_git("rev-parse", "nightlab/x", cwd=root) == before  # the branch never saw a half commit
    locks = sorted(p.name for p in (root / ".git").rglob("*.lock"))
    assert locks == ([] if point == "git.commit.written" else ["HEAD.lock", "x.lock"])
    repair.mend(root)  # what the next start does
    assert not list((root / ".git").rglob("*.lock"))
    assert run_git("fsck", "--strict", "--no-dangling", cwd=root) == ""
    new = Repo(wt, root).commit(PATHS, "trial 1")  # and the commit goes through again
    assert run_git("rev-parse", "nightlab/x~1", cwd=root) == before != new


def test_attributes_leave_the_commit_to_git(root: Path) -> None:
    wt = root / WT
    (wt / ".gitattributes").write_text("*.py text eol=crlf\n")  # not committed: it still applies to `git add`
    edit(wt)
    new = Repo(wt, root).commit(PATHS, "trial 1")
    assert run_git("rev-parse", "nightlab/x", cwd=root) == new
    assert run_git("cat-file", "-p", f"{new}:train.py", cwd=root) == "LR = 0.2"
    run_git("config", "core.autocrlf", "input", cwd=root)
    assert not Repo(wt, root).fast


def test_message_clean_up_is_gits() -> None:
    assert cleaned("  a  \n\n\n b\t\n\n") == "  a\n\n b\n"
    assert cleaned("\n\n") == ""
