"""The keep rule: a pure function of the candidate's runs, the best so far, the noise and the config."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from enum import StrEnum

from nightlab.config import KeepConfig
from nightlab.types import Metric


class Verdict(StrEnum):
    KEEP = "keep"
    DISCARD = "discard"
    CONFIRM = "confirm"  # uncertain: run again with fresh seeds, then decide on the mean


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    value: float  # the mean the verdict rests on
    improvement: float  # positive = better than the best
    threshold: float


def noise(values: list[float]) -> float | None:
    """The spread of repeated runs (sample standard deviation); None with fewer than two."""
    return statistics.stdev(values) if len(values) >= 2 else None


def threshold(keep: KeepConfig, sigma: float | None) -> float:
    if keep.threshold == "auto":
        return keep.sigmas * sigma if sigma else 0.0
    return float(keep.threshold)


def decide(metric: Metric, runs: list[float], best: float, sigma: float | None, keep: KeepConfig) -> Decision:
    """Keep only what beats the best by more than the threshold; ties and sub-threshold wins revert.

    A win smaller than twice the threshold is uncertain while confirmation runs remain: it is re-run
    and decided on the mean of all its runs.
    """
    value = statistics.fmean(runs)
    gain = metric.improvement(value, best)
    limit = threshold(keep, sigma)
    if gain <= limit:
        return Decision(Verdict.DISCARD, value, gain, limit)
    confirmations_left = len(runs) < 1 + keep.confirm
    if confirmations_left and limit > 0 and gain < 2 * limit:
        return Decision(Verdict.CONFIRM, value, gain, limit)
    return Decision(Verdict.KEEP, value, gain, limit)
