"""Starting states for `[search] policy = "frontier"`: a trial may start from a near-miss instead of the best.

A near-miss is a discarded trial whose measured value is statistically tied with the best: worse by no more than
`keep.sigmas` standard errors of the difference, σ·sqrt(1/n + 1/n_best) (σ: the baseline's seed noise; n, n_best:
the runs behind each mean). Such a state may hold a change that is as good as the best and opens other moves, and
the ratchet would never look at it again.

Which state a trial starts from: the one with the highest upper-confidence score

    ucb = gain + keep.sigmas · (σ / sqrt(n)) / sqrt(1 + children)

where gain is the state's value minus the best's in the goal's direction (0 for the best, negative for a
near-miss), σ/sqrt(n) the standard error of its own mean, and children the trials already started from it. A
near-miss measured once has a wide interval, so it gets a look; every trial started from a state halves-ish its
bonus, so the best (which every greedy trial expands) wins again as soon as the near-misses have been tried. With
no noise measured (deterministic code) nothing is tied but an exact equal, and the policy is greedy.

The branch always points at the best: a trial from a near-miss is judged against the best by the keep rule, and
if kept the branch moves to it (its lineage replaces the old one). It is never rebased onto the best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nightlab.ledger import Ledger, TrialRecord, best_of
from nightlab.types import Metric, Status

CHAIN = (Status.BASELINE, Status.KEEP)


@dataclass
class State:
    rec: TrialRecord
    gain: float  # vs the best, in the goal's direction (≤ 0 for a near-miss)
    children: int
    ucb: float


def states(trials: list[TrialRecord], metric: Metric, noise: float | None, sigmas: float) -> list[State]:
    """The best and the near-misses tied with it, each with its score (highest first; the best wins ties)."""
    best = best_of(trials)
    if best is None or best.metric is None:
        return []
    sign = -1.0 if metric.goal == "minimize" else 1.0
    sigma = noise or 0.0
    out = []
    for t in trials:
        if t.metric is None or not t.runs or not (t is best or t.status == Status.DISCARD):
            continue
        gain = sign * (t.metric - best.metric)
        if t is not best and gain < -sigmas * sigma * math.sqrt(1 / len(t.runs) + 1 / max(1, len(best.runs))):
            continue
        children = sum(1 for c in trials if c.parent == t.commit_sha and c.n > t.n)
        bonus = sigmas * sigma / math.sqrt(len(t.runs)) / math.sqrt(1 + children)
        out.append(State(t, gain, children, gain + bonus))
    return sorted(out, key=lambda s: (-s.ucb, s.rec is not best, -s.rec.n))


def choose(trials: list[TrialRecord], metric: Metric, noise: float | None, sigmas: float) -> TrialRecord | None:
    """The state the next trial starts from (None before the baseline finished)."""
    ranked = states(trials, metric, noise, sigmas)
    return ranked[0].rec if ranked else None


def from_near_miss(trials: list[TrialRecord], parent: str) -> bool:
    """Whether `parent` is a near-miss (a discarded trial's commit) rather than a best, current or past."""
    return bool(parent) and not any(t.commit_sha == parent for t in trials if t.status in CHAIN)


def chosen(policy: str, ledger: Ledger, parent: str) -> bool:
    """Whether a trial starts from a near-miss the frontier policy chose (under greedy every parent is a best:
    nothing is read per trial)."""
    return policy == "frontier" and from_near_miss(ledger.trials(), parent)


def lineage(trials: list[TrialRecord], commit: str) -> list[TrialRecord]:
    """The trials that led to `commit`, from the baseline to the one that made it."""
    by_commit = {t.commit_sha: t for t in trials if t.commit_sha}
    chain: list[TrialRecord] = []
    while (t := by_commit.get(commit)) is not None and t not in chain:
        chain.append(t)
        commit = t.parent
    return chain[::-1]


def starting_note(policy: str, ledger: Ledger, parent: str, metric: Metric) -> str:
    """The brief's note on where a trial starts (greedy trials start from the best: nothing to say, nothing read)."""
    return brief_note(ledger.trials(), parent, metric) if policy == "frontier" else ""


def brief_note(trials: list[TrialRecord], parent: str, metric: Metric) -> str:
    """For the agent: the state this trial starts from when it is not the best, and what led there."""
    best = best_of(trials)
    start = next((t for t in trials if t.commit_sha == parent), None)
    if best is None or start is None or start is best:
        return ""
    steps = "\n".join(f"- trial {t.n} ({t.status}, {metric.name} {_fmt(t.metric)}): {t.description}"
                      for t in lineage(trials, parent))
    return (f"\n\n## Starting state\n\nThis trial starts from trial {start.n}, a near-miss statistically tied with "
            f"the best (trial {best.n}): {metric.name} {_fmt(start.metric)} over {len(start.runs)} run(s) vs "
            f"{_fmt(best.metric)}. It is judged against the best. What led there:\n{steps}\n")


def children_of(trials: list[TrialRecord]) -> dict[int, list[int]]:
    """The search tree: each trial's number → the trials started from its commit (the baseline is the root)."""
    by_commit = {t.commit_sha: t.n for t in trials if t.commit_sha}
    tree: dict[int, list[int]] = {t.n: [] for t in trials}
    for t in trials:
        if t.n and (p := by_commit.get(t.parent)) is not None and p != t.n:
            tree[p].append(t.n)
    return tree


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.6g}"
