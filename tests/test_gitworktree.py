"""nightlab's own status and reset of a worktree (gitworktree, gitindex) against real git on the same worktrees: the
same paths `git status` lists, the files, index and refs `git reset --hard` leaves (git then sees nothing to
report), racily clean entries compared by content, ignore rules trusted only while unchanged, git left to answer
where it must, and a kill at each step leaves a worktree git and the next reset are content with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nightlab import gitindex, repair
from nightlab.errors import NightlabError
from nightlab.gitcommit import Repo
from nightlab.gitobjects import Fallback
from nightlab.gitworktree import Checkout

from gitkit import PATHS, WT, edit, make_root, run_git


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_root(tmp_path, monkeypatch)


def git_status(wt: Path) -> dict[str, bool]:
    """What edits.changed_files read from git before: path → whether git tracks it."""
    out = subprocess.run(["git", "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames"], cwd=wt,
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout  # the index as it is: no refresh
    return {e[3:]: not e.startswith("??") for e in out.split("\0") if e}


def status(co: Checkout, linked: list[str] | None = None) -> dict[str, bool]:
    """The in-process answer, learning from git first where it must (as edits.changed_files does)."""
    try:
        return co.status(linked or [])
    except Fallback:
        co.learn()
        return co.status(linked or [])


def checkout(root: Path) -> Checkout:
    co = Checkout(Repo(root / WT, root))
    assert not co.why_slow, co.why_slow
    return co


def test_the_status_is_gits_for_every_kind_of_change(root: Path) -> None:
    wt = root / WT
    (root / ".git" / "info" / "exclude").write_text("/.nightlab/\n*.log\n")
    co = checkout(root)
    assert status(co) == git_status(wt) == {}
    edit(wt)  # a change, a deletion (its directory gone), a new file, a rewrite
    (wt / "deep" / "er").mkdir(parents=True)
    (wt / "deep" / "er" / "x.py").write_text("x\n")  # new, in new nested directories
    (wt / "run.log").write_text("ignored\n")
    (wt / "link").unlink()
    (wt / "link").symlink_to("sub/run.sh")  # a symlink pointing elsewhere
    (wt / "data").symlink_to(root)  # linked data: not an edit
    want = git_status(wt)
    assert co.learn() == want  # git's answer, asked with the ignored paths beside it
    assert "run.log" not in want and "data" in want and want["deep/er/x.py"] is False
    assert status(co, ["data"]) == {p: t for p, t in want.items() if p != "data"}
    (wt / "new.log").write_text("ignored too\n")  # a path git was not asked about: asked again
    assert status(co, ["data"]) == {p: t for p, t in git_status(wt).items() if p != "data"}
    os.chmod(wt / "train.py", 0o755)  # the executable bit alone
    (wt / "sub" / "run.sh").unlink()
    assert status(co, ["data"]) == {p: t for p, t in git_status(wt).items() if p != "data"}


def test_a_rewrite_with_the_same_stat_is_seen_by_its_content(root: Path) -> None:
    """The benchmark's agent rewrites `STEP = 0` as `STEP = 1` within a tick of the reset: every stat field may be
    the same. Made certain here: the index is given the rewritten file's stat, and the file's mtime (the same tick,
    whatever the machine's load: a tick later the stat alone would be trusted, by git too a second later)."""
    wt = root / WT
    co = checkout(root)
    co.reset(run_git("rev-parse", "HEAD", cwd=wt), "", [])
    co.learn()
    (wt / "train.py").write_text("LR = 0.3\n")  # the same size
    st = (wt / "train.py").lstat()
    index = gitindex.read(co.gitdir / "index")
    index.entries["train.py"].stat = gitindex.stat_data(st)
    lock = gitindex.Lock(co.gitdir / "index")
    lock.commit(index.entries, "test")
    os.utime(co.gitdir / "index", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert co.status([]) == {"train.py": True}
    assert git_status(wt) == {"train.py": True}  # git compares the content of a racily clean entry too
    assert co.same(gitindex.read(co.gitdir / "index"), "sub/run.sh", (wt / "sub" / "run.sh").lstat())
    os.chmod(wt / "sub" / "run.sh", 0o644)  # the executable bit alone: the same bytes
    assert co.status([]) == git_status(wt) == {"train.py": True, "sub/run.sh": True}


def reset_both(root: Path, commit: str, prepare: object) -> tuple[Path, Path]:
    """`prepare(worktree)` in two worktrees at the branch; one reset by git, one here; both worktrees."""
    ours, theirs = root / WT, root / ".nightlab" / "x" / "theirs"
    run_git("worktree", "add", "-q", "--detach", str(theirs), "nightlab/x", cwd=root)
    for wt in (ours, theirs):
        prepare(wt)  # type: ignore[operator]
    run_git("reset", "--hard", "-q", commit, cwd=theirs)
    co = checkout(root)
    co.learn()
    if co.reset(commit, "", ["data"]):
        run_git("clean", "-fdq", "-e", "data", "--", ".", cwd=ours)
    run_git("clean", "-fdq", "-e", "data", "--", ".", cwd=theirs)
    return ours, theirs


def tree_of(wt: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for p in sorted(wt.rglob("*")):
        if ".git" in p.relative_to(wt).parts or (p.is_dir() and not p.is_symlink()):
            continue
        st = p.lstat()
        out[p.relative_to(wt).as_posix()] = (st.st_mode, os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
    return out


def test_a_reset_leaves_what_git_reset_and_clean_leave(root: Path) -> None:
    wt = root / WT
    base = run_git("rev-parse", "HEAD", cwd=wt)
    edit(wt)
    os.chmod(wt / "train.py", 0o755)
    trial = Repo(wt, root).commit([*PATHS, "train.py"], "trial 1")

    (root / ".git" / "info" / "exclude").write_text("/.nightlab/\n*.pyc\n")

    def prepare(tree: Path) -> None:
        (tree / "sub" / "__pycache__").mkdir(exist_ok=True)  # kept by the first round's reset
        (tree / "sub" / "__pycache__" / "m.pyc").write_text("kept: ignored\n")
        (tree / "stray" / "deep").mkdir(parents=True)
        (tree / "stray" / "deep" / "out.txt").write_text("removed\n")
        if not (tree / "data").is_symlink():
            (tree / "data").symlink_to(root)
        (tree / "sub" / "new.md").write_text("changed by a run\n")

    for target in (base, trial):
        ours, theirs = reset_both(root, target, prepare)
        assert tree_of(ours) == tree_of(theirs) and "sub/__pycache__/m.pyc" in tree_of(ours)
        assert git_status(ours) == git_status(theirs) == {"data": False}
        assert run_git("ls-files", "-s", cwd=ours) == run_git("ls-files", "-s", cwd=theirs)
        assert run_git("diff", "HEAD", cwd=ours) == "" and run_git("rev-parse", "HEAD", cwd=ours) == target
        line = (root / ".git" / "worktrees" / "worktree" / "logs" / "HEAD").read_text().splitlines()[-1]
        assert line.endswith(f"\treset: moving to {target}")
        run_git("worktree", "remove", "--force", str(theirs), cwd=root)
    assert run_git("fsck", "--strict", "--no-dangling", cwd=root) == ""


def test_a_kept_trial_is_reset_to_without_rewriting_its_files(root: Path) -> None:
    """After nightlab's own commit the index is still the parent's; the reset to the commit (a keep) finds the
    edits already there: it takes their stat, and git sees the index and the files as the commit's."""
    wt = root / WT
    edit(wt)
    trial = Repo(wt, root).commit(PATHS, "trial 1")
    inode = (wt / "train.py").stat().st_ino
    (wt / "sub" / "deep").rmdir()  # left empty by the edit: `git clean -fd`'s (reset() would say it must run)
    assert checkout(root).reset(trial, "", []) is False
    assert (wt / "train.py").stat().st_ino == inode and (wt / "train.py").read_text() == "LR = 0.2\n"
    assert git_status(wt) == {} and run_git("diff", "HEAD", cwd=wt) == ""
    staged = [(line.split()[0], line.split()[1], line.split("\t")[1])
              for line in run_git("ls-files", "-s", cwd=wt).splitlines()]
    assert staged == [(line.split()[0], line.split()[2], line.split("\t")[1])
                      for line in run_git("ls-tree", "-r", trial, cwd=wt).splitlines()]


def test_untracked_files_are_removed_as_git_clean_would_or_by_it(root: Path) -> None:
    wt = root / WT
    head = run_git("rev-parse", "HEAD", cwd=wt)
    (root / ".git" / "info" / "exclude").write_text("/.nightlab/\nout/\n")
    co = checkout(root)
    (wt / "sub" / "data").symlink_to(root)  # linked data of the project in sub/
    (wt / "sub" / "out").mkdir()
    (wt / "sub" / "out" / "a.bin").write_text("ignored\n")
    (wt / "sub" / "new" / "deeper").mkdir(parents=True)
    (wt / "sub" / "new" / "deeper" / "stray.txt").write_text("x\n")
    assert co.reset(head, "sub", ["sub/data"]) is False  # git asked once which are ignored: none left for git clean
    assert not (wt / "sub" / "new").exists() and (wt / "sub" / "out" / "a.bin").exists()
    assert (wt / "sub" / "data").is_symlink()
    (wt / "stray.txt").write_text("x\n")
    assert co.reset(head, "sub", ["sub/data"]) is False and (wt / "stray.txt").exists()  # outside the project: kept
    (wt / "sub" / "more" / "data").mkdir(parents=True)
    (wt / "sub" / "more" / "data" / "x.txt").write_text("x\n")
    co.learn()  # known untracked, and yet
    assert co.reset(head, "sub", ["sub/data"]) is True  # `git clean -e data` keeps it (a pattern): git's call
    (root / ".git" / "info" / "exclude").write_text("/.nightlab/\nou?/\n")  # the same size, other rules
    with pytest.raises(Fallback):
        co.status(["sub/data"])
    assert status(co, ["sub/data"]) | {"sub/data": False} == git_status(wt) == {
        "sub/more/data/x.txt": False, "stray.txt": False, "sub/data": False}


def test_a_changed_gitignore_sends_the_question_back_to_git(root: Path) -> None:
    wt = root / WT
    (wt / "sub" / ".gitignore").write_text("*.a\n")
    (wt / "sub" / "x.a").write_text("1\n")
    (wt / "sub" / "x.b").write_text("1\n")
    co = checkout(root)
    assert status(co) == git_status(wt) == {"sub/.gitignore": False, "sub/x.b": False}
    (wt / "sub" / ".gitignore").write_text("*.b\n")  # the same size
    with pytest.raises(Fallback):
        co.status([])
    assert status(co) == git_status(wt) == {"sub/.gitignore": False, "sub/x.a": False}


def test_git_does_what_it_must(root: Path) -> None:
    wt = root / WT
    head = run_git("rev-parse", "HEAD", cwd=wt)
    (wt / ".gitattributes").write_text("*.py text eol=crlf\n")
    co = checkout(root)
    with pytest.raises(Fallback):
        co.reset(head, "", [])
    with pytest.raises(Fallback):
        co.status([])
    (wt / ".gitattributes").unlink()
    (wt / "nested").mkdir()
    run_git("init", "-q", cwd=wt / "nested")
    with pytest.raises(Fallback):
        co.status([])
    with pytest.raises(Fallback):
        co.reset(head[:7], "", [])
    run_git("config", "core.autocrlf", "true", cwd=root)
    assert Checkout(Repo(wt, root)).why_slow
    run_git("config", "--unset", "core.autocrlf", cwd=root)
    (co.gitdir / "index.lock").write_text("")
    with pytest.raises(NightlabError, match="index.lock exists"):
        co.reset(head, "", [])


KILLED = """
import sys
from pathlib import Path
from nightlab.gitcommit import Repo
from nightlab.gitworktree import Checkout
Checkout(Repo(Path(sys.argv[1]), Path(sys.argv[2]))).reset(sys.argv[3], "", [])
"""


@pytest.mark.parametrize("point", ["git.reset.indexed", "git.reset.locked"])
def test_killed_in_a_reset(root: Path, point: str) -> None:
    wt = root / WT
    base = run_git("rev-parse", "HEAD", cwd=wt)
    edit(wt)
    trial = Repo(wt, root).commit(PATHS, "trial 1")
    proc = subprocess.run([sys.executable, "-c", KILLED, str(wt), str(root), base], start_new_session=True,
                          env={**os.environ, "NIGHTLAB_CRASH_AT": point}, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert run_git("rev-parse", "nightlab/x", cwd=root) == trial  # HEAD moves last, as with git
    assert list((root / ".git").rglob("*.lock"))
    repair.mend(root)  # what the next start does
    assert not list((root / ".git").rglob("*.lock"))
    if checkout(root).reset(base, "", []):  # and the next reset puts everything right
        run_git("clean", "-fdq", "--", ".", cwd=wt)  # sub/new.md: the trial's, never in the index (as with git)
    assert git_status(wt) == {} and run_git("rev-parse", "nightlab/x", cwd=root) == base
    assert run_git("fsck", "--strict", "--no-dangling", cwd=root) == ""


def git_status_bytes(wt: Path) -> dict[str, bool]:
    """git_status, with names as bytes git gives them (a name need not be UTF-8), decoded as the OS decodes them."""
    out = subprocess.run(["git", "-c", "core.quotePath=false", "status", "--porcelain=v1", "-z",
                          "--untracked-files=all", "--no-renames"], cwd=wt, capture_output=True, check=True,
                         env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout
    return {os.fsdecode(e[3:]): not e.startswith(b"??") for e in out.split(b"\0") if e}


def test_the_users_own_ignore_file_counts_and_a_change_to_it_is_noticed(root: Path) -> None:
    """core.excludesFile (the user's global ignore file) hides paths as .gitignore does; its answer is trusted only
    while the file holds the same bytes."""
    wt = root / WT
    user = root.parent / "home" / "ignore"
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text("*.tmp\n")
    run_git("config", "core.excludesFile", str(user), cwd=root)
    co = checkout(root)
    (wt / "scratch.tmp").write_text("x\n")
    (wt / "notes.md").write_text("y\n")
    assert status(co) == git_status(wt) == {"notes.md": False}
    user.write_text("*.md\n")  # the same paths, other rules: what was learned no longer holds
    assert status(co) == git_status(wt) == {"scratch.tmp": False}
    user.unlink()
    assert status(co) == git_status(wt) == {"notes.md": False, "scratch.tmp": False}


def test_a_name_that_is_not_utf8_is_answered_as_git_answers(root: Path) -> None:
    wt = root / WT
    co = checkout(root)
    name = os.fsdecode(b"caf\xe9.py")  # Latin-1: an old project's file name
    (wt / name).write_text("x = 1\n")
    assert status(co) == git_status_bytes(wt) == {name: False}
    run_git("add", "--", name, cwd=wt)
    run_git("commit", "-qm", "a Latin-1 name", cwd=wt)
    head = run_git("rev-parse", "HEAD", cwd=wt)
    (wt / name).write_text("x = 2\n")
    assert status(co) == git_status_bytes(wt) == {name: True}
    try:
        co.reset(head, "", [])
    except Fallback:
        run_git("reset", "--hard", "-q", head, cwd=wt)
    assert (wt / name).read_text() == "x = 1\n"
    assert git_status_bytes(wt) == {} and status(co) == {}
