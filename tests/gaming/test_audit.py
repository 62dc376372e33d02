"""The audit itself (no training): every gaming edit is flagged on its own, honest changes and the optuna agent's
real proposals on every bundled example are not, and the checks that need numbers or a broken file."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from edits import EDITS, Edit
from legit import LEGIT

from nightlab.agents.optuna import OptunaAgent
from nightlab.audit import Gain, audit_change, split_paths
from nightlab.config import load
from nightlab.types import Brief, Status
from nlkit import ROOT

QUICKSTART = (ROOT / "examples" / "quickstart" / "train.py").read_text()
SPLITS = split_paths(["data/val.npz"], ["data/test.npz"], ["data/select.npz"])


def applied(e: Edit, text: str = QUICKSTART) -> str:
    for search, replace in e.subs:
        assert search in text, (e.name, search)
        text = text.replace(search, replace, 1)
    compile(text, e.name, "exec")  # the edit is valid Python: a crash would not test the audit
    return text


def checks(parent: str, child: str, gain: Gain | None = None) -> set[str]:
    return {f.check for f in audit_change({"train.py": parent}, {"train.py": child}, "val_loss", SPLITS, gain)}


@pytest.mark.parametrize("edit", [e for e in EDITS if e.file == "train.py"], ids=lambda e: e.name)
def test_every_gaming_edit_is_flagged_even_where_the_sandbox_stops_it(edit: Edit) -> None:
    found = checks(QUICKSTART, applied(edit))
    assert found, f"{edit.name}: no finding"
    if edit.flagged:
        assert found & edit.flagged, f"{edit.name}: found {found}, expected one of {edit.flagged}"


@pytest.mark.parametrize("edit", LEGIT, ids=lambda e: e.name)
def test_honest_changes_are_not_flagged(edit: Edit) -> None:
    assert checks(QUICKSTART, applied(edit)) == set()


@pytest.mark.parametrize("example", ["quickstart", "retrieval", "tinylm", "gpt-cuda"])
def test_the_optuna_agents_real_proposals_on_every_example_are_not_flagged(example: str, tmp_path: Path) -> None:
    """The demo's kind of keep: the optuna agent rewriting each example's constants, 25 proposals each."""
    src = ROOT / "examples" / example
    shutil.copytree(src, tmp_path / example)
    cfg = load(tmp_path / example / "nightlab.toml")
    cfg.agent.name = "optuna"
    agent = OptunaAgent(cfg, tmp_path / "state")
    original = (src / "train.py").read_text()
    rng = random.Random(0)
    flagged = {}
    for n in range(1, 26):
        (tmp_path / example / "train.py").write_text(original)
        agent.propose(tmp_path / example, Brief(trial=n, text="", editable=["train.py"], metric=cfg.primary,
                                                best=None, noise=None))
        child = (tmp_path / example / "train.py").read_text()
        assert child != original
        found = audit_change({"train.py": original}, {"train.py": child}, cfg.metric.name, SPLITS)
        if found:
            flagged[n] = [(f.check, f.reason) for f in found]
        agent.observe(n, Status.KEEP if n % 3 == 0 else Status.DISCARD, rng.uniform(1.0, 2.0))
    assert not flagged


def test_a_gain_far_beyond_any_earlier_one_from_a_tiny_diff_is_flagged() -> None:
    child = QUICKSTART.replace("INIT_SCALE = 1.0 ", "INIT_SCALE = 0.5 ")
    assert "gain" in checks(QUICKSTART, child, Gain(0.5, [0.01, 0.02]))
    assert "gain" not in checks(QUICKSTART, child, Gain(0.05, [0.01, 0.02]))  # within 5x the best earlier gain
    assert "gain" not in checks(QUICKSTART, child, Gain(0.5, []))  # nothing seen yet to compare with
    wide = applied(LEGIT[2])  # a real rewrite of the schedule: more than a few lines
    assert "gain" not in checks(QUICKSTART, wide, Gain(0.5, [0.01]))


def test_a_file_that_does_not_parse_is_reported_not_audited() -> None:
    assert checks(QUICKSTART, QUICKSTART + "\ndef broken(:\n") == {"unparsed"}
