"""A small repository for the tests of nightlab's own git writes (test_gitobjects.py, test_gitrefs.py), and git run
the way those tests compare against."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

DATE = "@1700000000 +0130"
WT = ".nightlab/x/worktree"


def run_git(*args: str, cwd: Path) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip()


def make_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with nested, executable and symlinked files, and a worktree on branch nightlab/x where nightlab
    keeps its own (so repair.mend knows it); fixed
    commit dates, so a commit made twice has one name."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_AUTHOR_DATE", DATE)
    monkeypatch.setenv("GIT_COMMITTER_DATE", DATE)
    repo = tmp_path / "repo"
    (repo / "sub" / "deep").mkdir(parents=True)
    run_git("init", "-q", "-b", "main", cwd=repo)
    run_git("config", "user.name", "Ada Tester", cwd=repo)
    run_git("config", "user.email", "ada@example.org", cwd=repo)
    (repo / "train.py").write_text("LR = 0.1\n")
    (repo / "sub" / "deep" / "model.py").write_text("WIDTH = 4\n")
    (repo / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (repo / "sub" / "run.sh").chmod(0o755)
    (repo / "link").symlink_to("train.py")
    run_git("add", "-A", cwd=repo)
    run_git("commit", "-qm", "init", cwd=repo)
    run_git("worktree", "add", "-q", "-b", "nightlab/x", str(repo / WT), cwd=repo)
    return repo


def edit(wt: Path) -> None:
    (wt / "train.py").write_text("LR = 0.2\n")
    (wt / "sub" / "deep" / "model.py").unlink()  # its directory goes with it
    (wt / "sub" / "new.md").write_text("notes\n")
    (wt / "sub" / "run.sh").write_text("#!/bin/sh\necho hi\n")


PATHS = ["train.py", "sub/deep/model.py", "sub/new.md", "sub/run.sh"]
MESSAGE = "  trial 1: LR up  \n\n\n\nstatus: running\t\n\n"


def by_git(wt: Path, message: str = MESSAGE) -> str:
    run_git("add", "--", *PATHS, cwd=wt)
    run_git("commit", "--quiet", "--no-verify", "-m", message, cwd=wt)
    return run_git("rev-parse", "HEAD", cwd=wt)
