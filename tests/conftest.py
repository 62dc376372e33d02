"""Shared fixtures. Helpers live in nlkit.py (tiny real projects, the real CLI, the real ledger)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from nlkit import Project, make_project
from scenariokit import SCENARIO, Scenario, checkout_state


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


@pytest.fixture(scope="session")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    proj = make_project(tmp_path_factory.mktemp("scenario"), ideas=SCENARIO)
    before = checkout_state(proj)
    proc = proj.run()  # no --max-trials: runs until the queue is exhausted
    return Scenario(proj, proc, before, checkout_state(proj))

