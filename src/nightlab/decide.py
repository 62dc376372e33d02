"""The keep rule: a pure function of the candidate's runs, the best so far, the noise and the config.

Two noises make a result move without the code getting better (see the README, "The keep rule"):
- seed noise: the same code run again with another seed. The baseline's `noise_runs` measure its
  spread sigma; the mean of n runs against a best measured m times then has standard error
  sigma * sqrt(1/n + 1/m) (runs with identical results count as one).
- evaluation noise: which examples happen to be in the validation split. Re-running cannot see it. When
  runs report per-example values, candidate and best are compared on the same examples: the standard
  error of the mean paired difference (per_example.paired_se) measures it.
The two are independent, so their variances add: se = sqrt(se_seed² + se_eval²). `threshold = "auto"`
keeps a change only if its gain exceeds `sigmas` standard errors; a gain within floating-point rounding
is a tie, and ties revert. A result just short of that is re-run (`confirm`) only if a re-run can add
evidence: not when the code gives the same number every time. With neither noise measured the rule
is a plain "better than the best" gate; nightlab says so (see `evidence_note`).

Measured by benchmarks/false_keeps.py, benchmarks/power.py (seed noise) and benchmarks/eval_noise.py
(evaluation noise, a deterministic train.py).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from nightlab.types import Metric

if TYPE_CHECKING:  # the schema (pydantic) is not needed to decide: `nightlab status` reads evidence_note
    from nightlab.config import KeepConfig


class Verdict(StrEnum):
    KEEP = "keep"
    DISCARD = "discard"
    CONFIRM = "confirm"  # uncertain: run again with fresh seeds, then decide on the mean


ROUNDING = 1e-9  # relative: a gain this small is floating-point noise (a mean of equal runs can be off by an ulp)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    value: float  # the mean the verdict rests on
    improvement: float  # positive = better than the best
    threshold: float  # the minimum improvement for a keep, for this many runs
    se: float = 0.0  # the standard error of the improvement (seed and evaluation noise together)


def noise(values: list[float]) -> float | None:
    """The spread of repeated runs (sample standard deviation); None with fewer than two."""
    return statistics.stdev(values) if len(values) >= 2 else None


def distinct(values: list[float]) -> int:
    """How many runs carry evidence: runs with identical results count as one."""
    return len(set(values))


def deterministic(values: list[float]) -> bool:
    """Several runs with different seeds, all giving the same number: re-running adds nothing."""
    return len(values) >= 2 and distinct(values) == 1


def standard_error(sigma: float, runs: int, best_runs: int | None) -> float:
    """Spread of (mean of `runs` runs) - (best's mean over `best_runs` runs); None = the best is exact."""
    return sigma * math.sqrt(1 / runs + (1 / best_runs if best_runs else 0.0))


def combined_se(sigma: float | None, runs: int = 1, best_runs: int | None = None,
                eval_se: float | None = None) -> float:
    seed = standard_error(sigma, runs, best_runs) if sigma else 0.0
    return math.sqrt(seed * seed + (eval_se or 0.0) ** 2)


def threshold(keep: KeepConfig, sigma: float | None, runs: int = 1, best_runs: int | None = None,
              eval_se: float | None = None) -> float:
    """The minimum improvement: `sigmas` standard errors ("auto"), or the configured absolute number."""
    if keep.threshold == "auto":
        return keep.sigmas * combined_se(sigma, runs, best_runs, eval_se)
    return float(keep.threshold)


def decide(metric: Metric, runs: list[float], best: float, sigma: float | None, keep: KeepConfig,
           best_runs: int | None = None, eval_se: float | None = None) -> Decision:
    """Keep only what beats the best by more than the threshold; ties and sub-threshold wins revert.

    `sigma`: the seed noise (0 = the code is deterministic, None = not measured); `best_runs`: how many
    distinct runs the best's value rests on; `eval_se`: the paired evaluation standard error, when the
    runs report per-example values. While confirmation runs remain and a re-run can add evidence, an
    uncertain result is re-run and then decided on the mean of all its runs: with "auto", a gain above
    half the threshold and below twice it; with a number, a gain above the threshold and below twice it.
    """
    value = statistics.fmean(runs)
    gain = metric.improvement(value, best)
    n = distinct(runs)
    se = combined_se(sigma, n, best_runs, eval_se)
    limit = threshold(keep, sigma, n, best_runs, eval_se)
    rerun_helps = sigma != 0 and not deterministic(runs)  # sigma None: not measured, a re-run may differ
    confirmations_left = len(runs) < 1 + keep.confirm and limit > 0 and rerun_helps
    low = limit / 2 if keep.threshold == "auto" else limit
    if confirmations_left and low < gain < 2 * limit:
        return Decision(Verdict.CONFIRM, value, gain, limit, se)
    if gain <= limit or gain <= ROUNDING * max(abs(value), abs(best)):  # relative: metrics of any scale
        return Decision(Verdict.DISCARD, value, gain, limit, se)
    return Decision(Verdict.KEEP, value, gain, limit, se)


def evidence_note(sigma: float | None, deterministic_baseline: bool, paired: bool) -> str:
    """What the keep rule can see, in one line; a warning when it sees no noise at all."""
    if paired:
        seed = ("the code is deterministic (identical noise runs: it ignores NIGHTLAB_SEED), so which model a seed "
                "happens to give cannot be measured; reading the seed from NIGHTLAB_SEED guards against that too"
                if deterministic_baseline else "seed noise measured" if sigma else "seed noise not measured")
        return f"paired per-example comparison: evaluation noise measured; {seed}"
    if sigma:
        return ("seed noise measured; evaluation noise (which examples are in the validation split) is not: "
                "report per-example values to measure it")
    why = ("the noise runs gave identical results (the code is deterministic)" if deterministic_baseline
           else "seed noise was not measured (noise_runs = 1)")
    return (f"no noise measured: {why} and the runs report no per-example values, so the keep rule is a plain "
            "'better than the best' gate; report per-example values in metrics.json (README: The keep rule)")
