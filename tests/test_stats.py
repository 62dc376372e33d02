"""stats.py against reference values (R / scipy give the same to the digits quoted)."""

from __future__ import annotations

import math

import pytest

from nightlab.stats import betainc, compare, compare_paired, t_quantile, t_two_sided_p
from nightlab.types import Metric


@pytest.mark.parametrize("t, df, p", [(2.0, 10, 0.073388), (1.0, 1, 0.5), (2.776445, 4, 0.05), (12.706205, 1, 0.05),
                                      (1.959964, 1e6, 0.05), (0.0, 3, 1.0)])
def test_two_sided_p(t: float, df: float, p: float) -> None:
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=2e-6)
    assert t_two_sided_p(-t, df) == pytest.approx(p, abs=2e-6)


@pytest.mark.parametrize("df, q", [(1, 12.706205), (2, 4.302653), (4, 2.776445), (10, 2.228139), (30, 2.042272)])
def test_quantile(df: float, q: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(q, rel=1e-6)


def test_betainc_edges_and_symmetry() -> None:
    assert betainc(2, 3, 0) == 0 and betainc(2, 3, 1) == 1
    assert betainc(2.5, 1.5, 0.3) == pytest.approx(1 - betainc(1.5, 2.5, 0.7), abs=1e-12)
    assert betainc(1, 1, 0.42) == pytest.approx(0.42)  # the uniform distribution


def test_welch_comparison() -> None:
    c = compare(Metric("loss", "minimize"), [1.0, 1.1, 0.9], [0.5, 0.6, 0.4])
    assert c.effect == pytest.approx(0.5) and c.cohens_d == pytest.approx(5.0)
    # equal variances and sizes: Welch's df = 4, t = 0.5 / sqrt(2 * 0.01 / 3)
    assert c.p_value == pytest.approx(t_two_sided_p(0.5 / math.sqrt(0.02 / 3), 4))
    half = 2.776445 * math.sqrt(0.02 / 3)
    assert (c.ci_low, c.ci_high) == pytest.approx((0.5 - half, 0.5 + half), rel=1e-5)


def test_comparison_follows_the_goal_and_edge_cases() -> None:
    up = compare(Metric("acc", "maximize"), [0.5, 0.6, 0.4], [1.0, 1.1, 0.9])
    assert up.effect == pytest.approx(0.5) and up.ci_low > 0
    exact = compare(Metric("m"), [2.0, 2.0], [1.0, 1.0])
    assert (exact.effect, exact.ci_low, exact.ci_high, exact.p_value) == (1.0, 1.0, 1.0, 0.0)
    assert compare(Metric("m"), [2.0, 2.0], [2.0, 2.0]).p_value == 1.0
    single = compare(Metric("m"), [2.0], [1.0, 1.5])
    assert single.effect == 0.75 and single.p_value is None and single.ci_low is None
    noisy = compare(Metric("m"), [1.0, 1.2, 0.8, 1.1], [1.05, 0.95, 1.15, 0.85])
    assert noisy.p_value > 0.5 and noisy.ci_low < 0 < noisy.ci_high


def test_a_paired_comparison_adds_the_evaluation_noise_to_the_seed_noise() -> None:
    loss = Metric("loss", "minimize")
    # one run a side: no seed noise is known, the evaluation's alone makes the interval (df ~ a large split)
    one = compare_paired(loss, [1.0], [0.95], eval_se=0.01)
    assert (one.n_ref, one.n, one.effect) == (1, 1, pytest.approx(0.05)) and one.cohens_d is None
    assert (one.ci_low, one.ci_high) == pytest.approx((0.05 - 0.0196, 0.05 + 0.0196), abs=1e-4)
    assert one.p_value == pytest.approx(t_two_sided_p(5.0, 1e6))
    # with seed noise too, the interval around the same effect is wider than the seed noise's alone
    ref, runs = [1.0, 1.1, 0.9], [0.5, 0.6, 0.4]
    seed, both = compare(loss, ref, runs), compare_paired(loss, ref, runs, eval_se=0.1)
    assert both.effect == seed.effect and both.cohens_d == seed.cohens_d
    assert both.ci_low < seed.ci_low < seed.ci_high < both.ci_high
    assert both.ci_high - both.ci_low > 2 * 1.96 * math.sqrt(0.02 / 3 + 0.01)  # se of both parts, df > 4
    # exact runs and an exact evaluation: nothing to add
    assert compare_paired(loss, [2.0, 2.0], [1.0, 1.0], eval_se=0.0) == compare(loss, [2.0, 2.0], [1.0, 1.0])
