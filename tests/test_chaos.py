"""The chaos suite, short form: `nightlab run` and `nightlab verify` killed with -9 at seeded points of every step
(scripted and optuna agents, process and bwrap sandboxes), resumed each time, then every invariant checked and the
outcome compared with an uninterrupted run. benchmarks/chaos.py is the long form."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaosrun import Figures, Scenario, chaos

SHORT = [Scenario(seed=1, kills=15),
         Scenario(seed=2, agent="optuna", sandbox="bwrap", trials=3, kills=10, verify_kills=2),
         Scenario(seed=3, sandbox="bwrap", trials=4, kills=10, verify_kills=1)]


@pytest.fixture(scope="module")
def figures() -> Figures:
    return Figures()


@pytest.mark.parametrize("sc", SHORT, ids=lambda sc: f"{sc.agent}-{sc.sandbox}-{sc.seed}")
def test_killed_anywhere_resumes_to_the_uninterrupted_outcome(tmp_path: Path, sc: Scenario, figures: Figures) -> None:
    chaos(tmp_path, sc, figures)
    print(f"\n{sc}: {figures.total()} kills so far: {dict(figures.kills)}")


def test_the_short_form_killed_often_enough(figures: Figures) -> None:
    assert figures.total() >= 40, f"only {figures.total()} kills landed: {dict(figures.kills)}"
