"""Shared fixtures. Helpers live in nlkit.py (tiny real projects, the real CLI, the real ledger)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from nlkit import Project, content, idea, make_project, sub


@pytest.fixture
def no_git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For in-process code: git sees no user identity and HOME is a temp dir (opt-in)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def new_project(tmp_path: Path) -> Callable[..., Project]:
    """make_project(...) in this test's tmp_path; call it at most once per test (or pass sub=...)."""

    def make(sub: str = "", **kw) -> Project:
        return make_project(tmp_path / sub if sub else tmp_path, **kw)

    return make


@pytest.fixture(scope="session")
def podman_image() -> str:
    """The container tests' image (tests/container_image.py), built from this machine's files if missing.

    `make test` installs podman as root; CI must have it, elsewhere the container tests may skip.
    """
    from nightlab.sandbox.probe import probe_engine

    ok, why = probe_engine("podman")
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"podman does not work in CI ({why}): `make test` installs podman and runc with apt-get as root")
        pytest.skip(f"podman does not work here ({why}); as root, `make test` installs it")
    from container_image import ensure

    return ensure()


# -- one scripted session that walks through every trial outcome, shared by several test files ----------------
# Trial n (after the baseline, LR = 0.1 → loss 1.04):
SCENARIO = [
    idea("raise LR to 0.3", sub("LR = 0.1", "LR = 0.3"), hypothesis="LR is too low"),  # 1 keep   (1.00)
    idea("lower LR to 0.0", sub("LR = 0.3", "LR = 0.0")),  # 2 discard (1.09)
    idea("reword a comment", sub("# knobs", "# the knobs")),  # 3 discard: a tie (1.00)
    idea("exit with code 3", sub("seed = int", "raise SystemExit(3)\nseed = int")),  # 4 crash
    idea("report NaN", sub('print(f"val_loss: {loss:.6f}")', 'print("val_loss: nan")')),  # 5 crash
    idea("forget the metric", sub('print(f"val_loss: {loss:.6f}")', 'print("no metric today")')),  # 6 crash
    idea("crash after reporting", sub('print(f"peak_memory_gb: {MEMORY}")',
                                      'print(f"peak_memory_gb: {MEMORY}")\nraise SystemExit(1)')),  # 7 crash
    idea("edit the evaluation", sub("prepared", "tampered", file="prepare.py")),  # 8 rejected
    idea("only take notes", content("# Scratchpad\n\nnothing to try\n", file="scratchpad.md")),  # 9 rejected
    idea("add a helper module", content("X = 1\n", file="helper.py"), sub("LR = 0.3", "LR = 0.31")),  # 10 rejected
    idea("use more memory", sub("MEMORY = 0.1", "MEMORY = 5.0")),  # 11 invalid (constraint)
    idea("tamper during the run", sub("seed = int", 'open("prepare.py", "a").write("# tampered\\n")\nseed = int')),  # 12 invalid
]
SCENARIO_STATUS = ["baseline", "keep", "discard", "discard", "crash", "crash", "crash", "crash",
                   "rejected", "rejected", "rejected", "invalid", "invalid"]


@dataclass
class Scenario:
    proj: Project
    proc: object  # the CompletedProcess of `nightlab run`
    before: dict  # the user's checkout before the run
    after: dict

    @property
    def ledger(self) -> list[dict]:
        return self.proj.ledger("t")


def checkout_state(proj: Project) -> dict:
    return {
        "branch": proj.git("rev-parse", "--abbrev-ref", "HEAD"),
        "head": proj.git("rev-parse", "HEAD"),
        "status": proj.git("status", "--porcelain", "--untracked-files=all"),
        "files": {p.name: p.read_text() for p in proj.dir.iterdir() if p.is_file()},
        "branches": proj.git("branch", "--list", "--format=%(refname:short)"),
    }


@pytest.fixture(scope="session")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    proj = make_project(tmp_path_factory.mktemp("scenario"), ideas=SCENARIO)
    before = checkout_state(proj)
    proc = proj.run()  # no --max-trials: runs until the queue is exhausted
    return Scenario(proj, proc, before, checkout_state(proj))

