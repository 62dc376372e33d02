"""Two-sample statistics for `nightlab verify`: Welch's t-test, its 95% interval, Cohen's d (stdlib only).

The Student t distribution comes from the regularized incomplete beta function (Lentz's continued
fraction, as in Numerical Recipes); it is accurate to ~1e-12, far below what a handful of seeds can tell.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from nightlab.types import Metric


def _betacf(a: float, b: float, x: float) -> float:
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The q-quantile (q > 0.5) of Student's t, by bisection on the two-sided tail."""
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_two_sided_p(mid, df) > 2 * (1 - q):
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class Comparison:
    """`runs` against `reference`: the effect is the improvement (positive = better, whatever the goal)."""

    n_ref: int
    n: int
    reference: float
    value: float
    effect: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None  # Welch's two-sided t-test; None with fewer than two runs on a side
    cohens_d: float | None  # effect / pooled standard deviation

    def as_dict(self) -> dict:
        return asdict(self)


def compare(metric: Metric, reference: list[float], runs: list[float], level: float = 0.95) -> Comparison:
    ref_mean, mean = statistics.fmean(reference), statistics.fmean(runs)
    effect = metric.improvement(mean, ref_mean)
    if len(reference) < 2 or len(runs) < 2:
        return Comparison(len(reference), len(runs), ref_mean, mean, effect, None, None, None, None)
    v1, v2 = statistics.variance(reference) / len(reference), statistics.variance(runs) / len(runs)
    se = math.sqrt(v1 + v2)
    pooled = math.sqrt(((len(reference) - 1) * statistics.variance(reference)
                        + (len(runs) - 1) * statistics.variance(runs)) / (len(reference) + len(runs) - 2))
    d = effect / pooled if pooled > 0 else (0.0 if effect == 0 else math.copysign(math.inf, effect))
    if se == 0:  # deterministic runs: the effect is exact
        return Comparison(len(reference), len(runs), ref_mean, mean, effect, effect, effect,
                          1.0 if effect == 0 else 0.0, d)
    df = (v1 + v2) ** 2 / (v1 ** 2 / (len(reference) - 1) + v2 ** 2 / (len(runs) - 1))  # Welch-Satterthwaite
    half = t_quantile(0.5 + level / 2, df) * se
    return Comparison(len(reference), len(runs), ref_mean, mean, effect, effect - half, effect + half,
                      t_two_sided_p(effect / se, df), d)


def compare_paired(metric: Metric, reference: list[float], runs: list[float], eval_se: float,
                   level: float = 0.95) -> Comparison:
    """Like `compare`, with the evaluation noise of the same examples added to the seed noise.

    `eval_se` is the standard error of the paired per-example difference (per_example.paired_se): how much
    the effect would move with another draw of validation examples. Its variance adds to the seed part;
    the degrees of freedom follow Welch-Satterthwaite, the evaluation part counting as many (a large split).
    """
    seed = compare(metric, reference, runs, level)
    v_ref = statistics.variance(reference) / len(reference) if len(reference) >= 2 else 0.0
    v_run = statistics.variance(runs) / len(runs) if len(runs) >= 2 else 0.0
    v_eval = eval_se ** 2
    se = math.sqrt(v_ref + v_run + v_eval)
    if se == 0:
        return seed
    parts = [(v_ref, len(reference) - 1), (v_run, len(runs) - 1)]
    denom = sum(v * v / df for v, df in parts if v > 0 and df > 0) + v_eval ** 2 / 1e6
    df = (v_ref + v_run + v_eval) ** 2 / denom
    half = t_quantile(0.5 + level / 2, df) * se
    return Comparison(seed.n_ref, seed.n, seed.reference, seed.value, seed.effect, seed.effect - half,
                      seed.effect + half, t_two_sided_p(seed.effect / se, df), seed.cohens_d)
