"""The frontier policy: which state a trial starts from (unit, on real TrialRecords), and a session in which a
trial started from a near-miss is kept and the branch follows it (real runs, real git, the real CLI)."""

from __future__ import annotations

import pytest
from nlkit import TRAIN, idea, make_project, sub

from nightlab import frontier
from nightlab.ledger import TrialRecord
from nightlab.types import Metric, Status

LOSS = Metric("val_loss", "minimize")


def rec(n: int, status: str, runs: list[float], parent: str = "", description: str = "") -> TrialRecord:
    return TrialRecord(n=n, status=status, runs=runs, metric=sum(runs) / len(runs) if runs else None,
                       commit_sha=f"c{n}", parent=parent, description=description or f"change {n}")


def test_a_near_miss_tied_with_the_best_is_tried_then_the_best_again() -> None:
    base = rec(0, Status.BASELINE, [1.03, 1.04, 1.05])
    tied = rec(1, Status.DISCARD, [1.045], "c0")  # worse by 0.005 < 2σ·sqrt(1 + 1/3) = 0.023
    worse = rec(2, Status.DISCARD, [1.2], "c0")  # clearly worse: never a starting state
    trials = [base, tied, worse]
    ranked = frontier.states(trials, LOSS, 0.01, 2.0)
    assert [s.rec.n for s in ranked] == [1, 0]  # the tied one's wide interval outranks the twice-expanded best
    assert ranked[0].ucb == pytest.approx(-0.005 + 0.02)
    assert ranked[1].ucb == pytest.approx(2 * 0.01 / 3 ** 0.5 / 3 ** 0.5)
    trials.append(rec(3, Status.DISCARD, [1.1], "c1"))  # one child of the near-miss: its bonus shrinks
    trials.append(rec(4, Status.DISCARD, [1.1], "c1"))
    assert frontier.choose(trials, LOSS, 0.01, 2.0) is base
    assert frontier.choose(trials, LOSS, None, 2.0) is base  # no noise measured: greedy


def test_maximize_and_ties_prefer_the_best() -> None:
    acc = Metric("acc", "maximize")
    base = rec(0, Status.BASELINE, [0.5, 0.5])
    same = rec(1, Status.DISCARD, [0.5], "c0")
    assert frontier.choose([base, same], acc, 0.0, 2.0) is base  # deterministic: nothing to explore
    lower = rec(2, Status.DISCARD, [0.495], "c0")  # ucb -0.005 + 0.02 beats 0 + 0.02/sqrt(2)/sqrt(2)
    assert frontier.choose([base, lower], acc, 0.01, 2.0) is lower


def test_lineage_brief_note_and_tree() -> None:
    base = rec(0, Status.BASELINE, [1.0, 1.0])
    kept = rec(1, Status.KEEP, [0.9], "c0", "LR 0.1 → 0.2")
    near = rec(2, Status.DISCARD, [0.91], "c1", "DEPTH 2 → 4")
    child = rec(3, Status.RUNNING, [], "c2")
    trials = [base, kept, near, child]
    assert [t.n for t in frontier.lineage(trials, "c2")] == [0, 1, 2]
    note = frontier.brief_note(trials, "c2", LOSS)
    assert "starts from trial 2" in note and "the best (trial 1)" in note
    assert "- trial 1 (keep, val_loss 0.9): LR 0.1 → 0.2" in note and "- trial 2 (discard" in note
    assert frontier.brief_note(trials, "c1", LOSS) == ""  # from the best: nothing to say
    assert frontier.children_of(trials) == {0: [1], 1: [2], 2: [3], 3: []}
    assert frontier.from_near_miss(trials, "c2") and not frontier.from_near_miss(trials, "c0")


def test_a_trial_from_a_near_miss_is_kept_and_the_branch_follows_it(tmp_path) -> None:
    proj = make_project(tmp_path, train=TRAIN.replace("NOISE = 0.0", "NOISE = 0.01"), config={
        "keep": {"noise_runs": 3, "confirm": 0}, "search": {"policy": "frontier"}}, ideas=[
        idea("a tiny gain", sub("BONUS = 0.0", "BONUS = 0.005")),  # seed 1000: 1.035, tied with 1.04
        idea("a big gain on top of it", sub("BONUS = 0.005", "BONUS = 0.3")),  # applies only to the near-miss
    ])
    proj.run("--max-trials", "2")
    base, near, child = proj.log_json()
    assert near["status"] == "discard" and near["parent"] == base["commit"]
    assert child["parent"] == near["commit"] and child["status"] == "keep" and "rebased" not in child["reason"]
    assert proj.git("rev-parse", "nightlab/t") == child["commit"]  # the branch points at the best
    brief = (proj.state() / "runs" / "2" / "brief.md").read_text()
    assert "starts from trial 1, a near-miss" in brief
    assert proj.nl("report", "--tag", "t").returncode == 0
    html = (proj.state() / "report.html").read_text()
    assert '<ul id="tree">' in html and html.index("trial 2 · keep") > html.index("trial 1 · discard")
