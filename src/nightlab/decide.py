"""The keep rule: a pure function of the candidate's runs, the best so far, the noise and the config.

Why this shape (measured by benchmarks/false_keeps.py and benchmarks/power.py): a gain is compared
with its standard error, not with the raw noise, because the mean of n runs against a best measured
m times has spread sigma * sqrt(1/n + 1/m). A single run that falls just short of the threshold gets a
second chance (it is re-run), which is what lifts the chance of keeping a real 3-sigma win above 90%
while a change that does nothing is kept under 5% of the time.
"""

from __future__ import annotations

import math
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
    threshold: float  # the minimum improvement for a keep, for this many runs


def noise(values: list[float]) -> float | None:
    """The spread of repeated runs (sample standard deviation); None with fewer than two."""
    return statistics.stdev(values) if len(values) >= 2 else None


def standard_error(sigma: float, runs: int, best_runs: int | None) -> float:
    """Spread of (mean of `runs` runs) - (best's mean over `best_runs` runs); None = the best is exact."""
    return sigma * math.sqrt(1 / runs + (1 / best_runs if best_runs else 0.0))


def threshold(keep: KeepConfig, sigma: float | None, runs: int = 1, best_runs: int | None = None) -> float:
    """The minimum improvement: `sigmas` standard errors ("auto"), or the configured absolute number."""
    if keep.threshold == "auto":
        return keep.sigmas * standard_error(sigma, runs, best_runs) if sigma else 0.0
    return float(keep.threshold)


def decide(metric: Metric, runs: list[float], best: float, sigma: float | None, keep: KeepConfig,
           best_runs: int | None = None) -> Decision:
    """Keep only what beats the best by more than the threshold; ties and sub-threshold wins revert.

    While confirmation runs remain, an uncertain result is re-run and then decided on the mean of all
    its runs: with "auto", a gain above half the threshold and below twice it; with a number, a gain
    above the threshold and below twice it.
    """
    value = statistics.fmean(runs)
    gain = metric.improvement(value, best)
    limit = threshold(keep, sigma, len(runs), best_runs)
    confirmations_left = len(runs) < 1 + keep.confirm and limit > 0
    low = limit / 2 if keep.threshold == "auto" else limit
    if confirmations_left and low < gain < 2 * limit:
        return Decision(Verdict.CONFIRM, value, gain, limit)
    if gain <= limit:
        return Decision(Verdict.DISCARD, value, gain, limit)
    return Decision(Verdict.KEEP, value, gain, limit)
