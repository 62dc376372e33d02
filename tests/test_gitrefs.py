"""nightlab's own refs, trees and fallbacks (gitrefs, gitobjects, gitcommit) against real git: refs per worktree,
a stale old value refused, packed refs left alone, reflogs where and as git writes them, trees in git's order,
objects from an alternate, and every setting that must leave a commit to git doing so."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nightlab.errors import NightlabError
from nightlab.gitcommit import Repo
from nightlab.gitobjects import BLOB, EMPTY_TREE, Entry, Fallback, Objects
from nightlab.gitrefs import NULL
from gitkit import MESSAGE, PATHS, WT, by_git, edit, make_root, run_git


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_root(tmp_path, monkeypatch)


def other_commit(root: Path, message: str = "elsewhere") -> str:
    """A commit on HEAD's tree that no ref names (what another writer would have made)."""
    return run_git("commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", message, cwd=root)


def test_a_per_worktree_ref_is_the_worktrees_own(root: Path) -> None:
    wt = root / WT
    repo = Repo(wt, root)
    head = repo.head()
    repo.set_ref("refs/bisect/bad", head)
    repo.set_ref("refs/nightlab/x/trial-1", head)
    assert (root / ".git" / "worktrees" / "worktree" / "refs" / "bisect" / "bad").exists()
    assert run_git("rev-parse", "refs/bisect/bad", cwd=wt) == head
    assert subprocess.run(["git", "rev-parse", "--verify", "-q", "refs/bisect/bad"], cwd=root).returncode != 0
    assert run_git("rev-parse", "refs/nightlab/x/trial-1", cwd=root) == head  # a shared ref: seen by both


def test_a_ref_moved_under_us_is_refused_and_left_as_it_is(root: Path) -> None:
    wt = root / WT
    repo = Repo(wt, root)
    head, other = repo.head(), other_commit(root)
    run_git("update-ref", "refs/heads/nightlab/x", other, cwd=root)  # someone else moved the branch
    log = root / ".git" / "worktrees" / "worktree" / "logs" / "HEAD"
    before = log.read_bytes()
    with pytest.raises(NightlabError, match=f"cannot lock ref refs/heads/nightlab/x: it is at {other}, not {head}"):
        repo.refs.update("HEAD", head, head, b"A <a@b> 1 +0000", "commit: mine", "p")
    assert run_git("rev-parse", "nightlab/x", cwd=root) == other and log.read_bytes() == before
    assert not list((root / ".git").rglob("*.lock"))
    repo.refs.update("refs/nightlab/new", head, NULL, b"A <a@b> 1 +0000", "", "p")  # must not exist yet: it does not
    with pytest.raises(NightlabError, match="it is at"):
        repo.refs.update("refs/nightlab/new", other, NULL, b"A <a@b> 1 +0000", "", "p")
    assert run_git("rev-parse", "refs/nightlab/new", cwd=root) == head


def test_a_packed_ref_is_updated_by_a_loose_one_and_packed_refs_left_alone(root: Path) -> None:
    wt = root / WT
    repo = Repo(wt, root)
    head, other = repo.head(), other_commit(root)
    repo.set_ref("refs/nightlab/x/trial-0", head)
    run_git("pack-refs", "--all", "--prune", cwd=root)
    packed = (root / ".git" / "packed-refs").read_bytes()
    assert repo.refs.read("refs/nightlab/x/trial-0") == head  # from packed-refs alone
    repo.set_ref("refs/nightlab/x/trial-0", other)
    assert (root / ".git" / "refs" / "nightlab" / "x" / "trial-0").read_text() == other + "\n"
    assert (root / ".git" / "packed-refs").read_bytes() == packed  # the loose ref wins; git rewrites packed-refs
    assert run_git("for-each-ref", "--format=%(objectname)", "refs/nightlab/x/trial-0", cwd=root) == other
    run_git("pack-refs", "--all", "--prune", cwd=root)  # packed-refs changes: read again, not from memory
    assert repo.refs.read("refs/nightlab/x/trial-0") == other
    assert run_git("fsck", "--strict", "--no-dangling", cwd=root) == ""


@pytest.mark.parametrize("setting", ["true", "false", "always"])
def test_reflogs_are_made_where_and_as_git_makes_them(root: Path, setting: str) -> None:
    run_git("config", "core.logAllRefUpdates", setting, cwd=root)
    repo = Repo(root / WT, root)
    head, logs = repo.head(), root / ".git" / "logs"
    for space in ("refs/heads", "refs/nightlab"):
        repo.set_ref(f"{space}/mine", head)
        run_git("update-ref", f"{space}/theirs", head, cwd=root)
        mine, theirs = logs / space / "mine", logs / space / "theirs"
        assert mine.exists() == theirs.exists(), (setting, space)
        if mine.exists():
            assert mine.read_bytes() == theirs.read_bytes()  # same old, new, committer, date; no message


def test_a_reflog_message_is_one_line_as_git_keeps_it(root: Path) -> None:
    repo = Repo(root / WT, root)
    head, message = repo.head(), "  trial\t1:\n\n  LR   up \r\n"
    repo.refs.update("refs/heads/mine", head, None, repo.committer.line(""), message, "p")
    run_git("update-ref", "-m", message, "refs/heads/theirs", head, cwd=root)
    logs = root / ".git" / "logs" / "refs" / "heads"
    assert (logs / "mine").read_bytes() == (logs / "theirs").read_bytes()
    assert run_git("log", "-g", "--format=%gs", "refs/heads/mine", cwd=root) == "trial 1: LR up"


def git_tree(root: Path, files: dict[str, str]) -> str:
    """The tree git's own index writes for `files` (path → blob)."""
    env = {**os.environ, "GIT_INDEX_FILE": str(root / ".git" / "scratch-index")}
    subprocess.run(["git", "read-tree", "--empty"], cwd=root, env=env, check=True)
    for path, blob in files.items():
        subprocess.run(["git", "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}"], cwd=root, env=env,
                       check=True)
    return subprocess.run(["git", "write-tree"], cwd=root, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_trees_are_written_in_gits_order_and_an_emptied_directory_goes(root: Path) -> None:
    objects = Objects(root / ".git")
    blob = objects.write(b"blob", b"x\n")
    paths = ["a/b/c.txt", "a.txt", "a-b", "a0", "a/d"]  # "a" sorts as "a/": after "a.txt" and "a-b", before "a0"
    tree = objects.with_files(EMPTY_TREE, {p.encode(): Entry(BLOB, p.rsplit("/")[-1].encode(), blob) for p in paths})
    assert tree == git_tree(root, dict.fromkeys(paths, blob))
    run_git("fsck", "--strict", cwd=root)  # git checks a tree's order too
    fewer = objects.with_files(tree, {b"a/b/c.txt": None})
    assert fewer == git_tree(root, dict.fromkeys(paths[1:], blob))
    assert "a/b" not in run_git("ls-tree", "-r", "-t", "--name-only", fewer, cwd=root).split()
    assert objects.with_files(fewer, {b"a/d": None}) == git_tree(root, dict.fromkeys(paths[1:4], blob))
    with pytest.raises(Fallback):
        objects.with_files(tree, {b"a.txt/inside": Entry(BLOB, b"inside", blob)})  # a file where a directory goes


def test_a_mode_change_and_symlinks_are_committed_as_git_commits_them(root: Path) -> None:
    wt = root / WT

    def change() -> None:
        (wt / "train.py").chmod(0o755)  # the mode alone
        (wt / "link").unlink()
        (wt / "link").symlink_to("sub/run.sh")  # another target
        (wt / "sub" / "deep" / "model.py").unlink()
        (wt / "sub" / "deep" / "model.py").symlink_to("../run.sh")  # a file become a link

    paths = ["train.py", "link", "sub/deep/model.py"]
    change()
    repo = Repo(wt, root)
    mine = repo.commit(paths, "modes")
    tree = run_git("ls-tree", "-r", mine, cwd=root)
    assert "100755 blob" in tree.split("train.py")[0].splitlines()[-1]
    assert repo.blob(mine, "link") == b"sub/run.sh" and repo.blob(mine, "sub/deep/model.py") == b"../run.sh"
    run_git("reset", "--hard", "-q", "HEAD~1", cwd=wt)
    change()
    run_git("add", "--", *paths, cwd=wt)
    run_git("commit", "--quiet", "-m", "modes", cwd=wt)
    assert run_git("rev-parse", "HEAD", cwd=wt) == mine


def test_blobs_read_at_a_path(root: Path) -> None:
    repo = Repo(root / WT, root)
    head = repo.head()
    assert repo.blob(head, "link") == b"train.py"  # a link's target, as `git show` gives it
    assert repo.blob(head, "sub") is None and repo.blob(head, "sub/deep") is None  # directories are no blobs
    assert repo.blob(head, "train.py/x") is None
    assert repo.blob("HEAD", "sub/run.sh") == b"#!/bin/sh\n"  # not an object name: git resolves it
    with pytest.raises(NightlabError, match="missing"):
        repo.objects.read("1" * 40)
    with pytest.raises(NightlabError, match="not a tree"):
        repo.objects.tree(run_git("rev-parse", f"{head}:train.py", cwd=root))


def test_a_commit_in_a_clone_whose_objects_are_borrowed(root: Path) -> None:
    clone = root.parent / "clone"
    run_git("clone", "-q", "--shared", str(root), str(clone), cwd=root.parent)
    for key, value in (("user.name", "Ada Tester"), ("user.email", "ada@example.org")):
        run_git("config", key, value, cwd=clone)
    repo = Repo(clone, clone)
    assert repo.fast, repo.why_slow
    head = repo.head()
    assert not list((clone / ".git" / "objects").glob("??"))  # every object is the original's
    assert repo.blob(head, "sub/deep/model.py") == b"WIDTH = 4\n"
    (clone / "train.py").write_text("LR = 0.3\n")
    new = repo.commit(["train.py"], "trial 1")
    assert run_git("rev-parse", "HEAD~1", cwd=clone) == head
    assert run_git("fsck", "--strict", "--no-dangling", cwd=clone) == ""
    assert run_git("show", f"{new}:train.py", cwd=clone) == "LR = 0.3"


@pytest.mark.parametrize("key, value", [
    ("core.autocrlf", "true"), ("core.fileMode", "false"), ("core.symlinks", "false"),
    ("core.sharedRepository", "group"), ("i18n.commitEncoding", "latin1"), ("commit.cleanup", "verbatim"),
    ("core.attributesFile", "/nonexistent"), ("extensions.worktreeConfig", "true")])
def test_each_setting_that_changes_a_commit_leaves_it_to_git(root: Path, key: str, value: str) -> None:
    run_git("config", key, value, cwd=root)
    repo = Repo(root / WT, root)
    assert not repo.fast and repo.why_slow == f"{key.lower()} is set"


def test_a_message_kept_verbatim_by_git_config_is_kept(root: Path) -> None:
    run_git("config", "commit.cleanup", "verbatim", cwd=root)
    wt = root / WT
    edit(wt)
    new = Repo(wt, root).commit(PATHS, MESSAGE)
    raw = subprocess.run(["git", "cat-file", "commit", new], cwd=root, capture_output=True, text=True).stdout
    assert raw.split("\n\n", 1)[1] == MESSAGE  # not cleaned up
    run_git("reset", "--hard", "-q", "HEAD~1", cwd=wt)
    edit(wt)
    assert by_git(wt) == new


def test_what_the_environment_and_files_say_leaves_commits_to_git(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wt = root / WT
    (root / ".git" / "info" / "attributes").write_text("*.py -text\n")
    assert Repo(wt, root).why_slow == "info/attributes exists"
    (root / ".git" / "info" / "attributes").unlink()
    xdg = root.parent / "xdg"
    (xdg / "git").mkdir(parents=True)
    (xdg / "git" / "attributes").write_text("*.py -text\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert Repo(wt, root).why_slow == "a global attributes file exists"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("GIT_INDEX_FILE", str(root / ".git" / "other-index"))
    assert Repo(wt, root).why_slow == "GIT_INDEX_FILE is set"
    monkeypatch.delenv("GIT_INDEX_FILE")
    assert Repo(wt, root).fast


def test_a_gitattributes_file_on_the_path_sends_the_commit_to_git(root: Path) -> None:
    wt = root / WT
    run_git("config", "filter.upper.clean", "tr a-z A-Z", cwd=root)
    (wt / "sub" / ".gitattributes").write_text("*.md filter=upper\n")  # below the top: still on sub/new.md's path
    (wt / "sub" / "new.md").write_text("notes\n")
    new = Repo(wt, root).commit(["sub/new.md"], "notes")
    assert run_git("show", f"{new}:sub/new.md", cwd=root) == "NOTES"  # git's clean filter ran


def test_an_unborn_head_gets_its_first_commit_from_git(root: Path) -> None:
    fresh = root.parent / "fresh"
    run_git("init", "-q", "-b", "main", str(fresh), cwd=root.parent)
    (fresh / "train.py").write_text("LR = 0.1\n")
    repo = Repo(fresh, fresh)
    assert repo.refs.resolve("HEAD") is None
    first = repo.commit(["train.py"], "first")
    assert run_git("rev-parse", "main", cwd=fresh) == first
    assert run_git("rev-list", "--parents", "-1", first, cwd=fresh) == first  # a root commit
    assert run_git("show", f"{first}:train.py", cwd=fresh) == "LR = 0.1"
