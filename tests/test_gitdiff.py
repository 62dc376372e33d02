"""A trial's patch written by nightlab itself (gitdiff, gitabbrev) against git's own `git show --format= <commit> --
.`: byte for byte where git's is the only right one, a patch `git apply` takes where hunks could be cut two ways,
and git's own where this module cannot tell what git would print."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from nightlab import gitdiff
from nightlab.gitcommit import Repo

from gitkit import make_root, run_git


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_root(tmp_path, monkeypatch)


def shown(root: Path, commit: str, sub: str = ".") -> bytes:
    proc = subprocess.run(["git", "-c", "core.quotePath=false", "show", "--format=", commit, "--", "."],
                          cwd=root / sub, capture_output=True, check=True)
    return proc.stdout


def commit(repo: Repo, changes: dict[str, str | bytes | None], message: str = "change") -> str:
    """Files written (None: removed; bytes as they are; `-> target`: a symlink), then committed by nightlab."""
    for path, content in changes.items():
        file = repo.tree / path
        if file.is_symlink() or file.exists():
            file.unlink()
        if content is None:
            continue
        file.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str) and content.startswith("-> "):
            file.symlink_to(content[3:])
        else:
            file.write_bytes(content if isinstance(content, bytes) else content.encode())
    return repo.commit(list(changes), message)


PROGRAM = "".join(f"def step_{i}(x):\n    y = x * {i}\n    return y\n\n\n" for i in range(12))
EDITS = [
    {"train.py": "LR = 0.2\n"},  # one line
    {"model.py": PROGRAM},  # a new file
    {"model.py": PROGRAM.replace("x * 7", "x * 70").replace("step_2(", "step_two(")},  # two hunks, function lines
    {"model.py": PROGRAM.replace("x * 7", "x * 70")[:-3]},  # no newline at the end any more
    {"data.bin": b"\x89PNG\0\1\2"},  # binary
    {"data.bin": b"\x89PNG\0\1\3"},
    {"sub/run.sh": None},  # deleted (executable)
    {"link": "-> model.py"},  # a symlink's new target
    {"link": "not a link any more\n"},  # a link turned file: deleted and added
    {"notes dir/my notes.md": "a name with spaces\n", "modèle.py": "É = 1\n"},
    {"empty.txt": ""},
    {"crlf.py": "a = 1\r\nb = 2\r\n"},
    {"crlf.py": "a = 1\r\nb = 3\r\n"},
]


def test_a_patch_is_the_one_git_shows(root: Path) -> None:
    repo = Repo(root, root)
    assert not gitdiff.why_git(repo)
    for changes in EDITS:
        sha = commit(repo, changes)
        assert gitdiff.render(repo, sha, ".").encode() == shown(root, sha), changes
    (root / "train.py").chmod(0o755)
    sha = repo.commit(["train.py"], "mode only")
    assert gitdiff.render(repo, sha, ".").encode() == shown(root, sha)


def test_a_patch_is_limited_to_the_project_directory(root: Path) -> None:
    repo = Repo(root, root)
    sha = commit(repo, {"train.py": "LR = 0.3\n", "sub/deep/model.py": "WIDTH = 8\n"})
    mine = gitdiff.render(repo, sha, "sub")
    assert mine.encode() == shown(root, sha, "sub")
    assert "a/sub/deep/model.py" in mine and "train.py" not in mine


VOCABULARY = ["", "", "}", "    return x", "def f(x):", "    x += 1", "# note", "class A:", "    pass", "\tpass"]


def test_a_patch_applies_where_hunks_could_be_cut_another_way(root: Path) -> None:
    """Repetitive lines, where difflib and git's diff may align differently: each patch, applied by git to its
    parent, gives the commit (and most are git's own text)."""
    repo, rng = Repo(root, root), random.Random(5)
    lines = [rng.choice(VOCABULARY) for _ in range(80)]
    first = commit(repo, {"train.py": "\n".join(lines) + "\n"})
    index = {**os.environ, "GIT_INDEX_FILE": str(root / "scratch-index")}
    subprocess.run(["git", "read-tree", first], cwd=root, env=index, check=True)
    same = 0
    for _ in range(10):
        for _ in range(rng.randint(2, 8)):
            i = rng.randrange(len(lines) + 1)
            what = rng.random()
            if what < 0.4:
                lines[i:i] = rng.choices(VOCABULARY, k=rng.randint(1, 3))
            elif what < 0.7:
                del lines[i:i + rng.randint(1, 3)]
            elif i < len(lines):
                lines[i] = rng.choice(VOCABULARY)
        text = "\n".join(lines) + ("\n" if rng.random() < 0.8 else "")
        sha = commit(repo, {"train.py": text})
        mine = gitdiff.render(repo, sha, ".").encode()
        same += mine == shown(root, sha)
        subprocess.run(["git", "apply", "--cached", "-"], cwd=root, env=index, input=mine, check=True)
        tree = subprocess.run(["git", "write-tree"], cwd=root, env=index, capture_output=True, text=True, check=True)
        assert tree.stdout.strip() == run_git("rev-parse", f"{sha}^{{tree}}", cwd=root)
    assert 0 < same < 10  # both kinds were met


@pytest.mark.parametrize("setup", ["rename", "config", "attributes"])
def test_what_git_would_print_otherwise_is_git_own(root: Path, setup: str) -> None:
    repo = Repo(root, root)
    if setup == "rename":
        changes: dict[str, str | None] = {"train.py": None, "trainer.py": "LR = 0.1\n"}
    elif setup == "config":
        run_git("config", "diff.noprefix", "true", cwd=root)
        changes = {"train.py": "LR = 0.2\n"}
    else:
        changes = {"train.py": "LR = 0.2\n", ".gitattributes": "*.py diff=python\n"}
    sha = commit(repo, changes)
    repo = Repo(root, root)  # settings are read when it is made
    expected = shown(root, sha).decode()
    assert gitdiff.patch(repo, sha, ".", root) == expected
    with pytest.raises(gitdiff.Fallback):
        gitdiff.render(repo, sha, ".")


def test_names_are_abbreviated_past_a_shared_prefix(root: Path) -> None:
    """Two blobs whose names share 7 hex digits (found by search): git prints 8, loose or packed."""
    repo = Repo(root, root)
    commit(repo, {"other.py": "x = 4098\n"})
    sha = commit(repo, {"train.py": "x = 17383\n"})
    mine = gitdiff.render(repo, sha, ".")
    assert "..54890b2b " in mine and mine.encode() == shown(root, sha)
    run_git("repack", "-adq", cwd=root)
    run_git("prune-packed", cwd=root)
    packed = Repo(root, root)
    assert not (root / ".git" / "objects" / "54").exists()
    assert gitdiff.render(packed, sha, ".") == mine
