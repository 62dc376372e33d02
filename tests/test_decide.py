"""The keep rule (decide.py): a pure function, tested over many cases for both goals.

Values are chosen to be exact in binary floating point so the boundaries (gain == threshold,
gain == 2 x threshold) are really tested at the boundary.
"""

from __future__ import annotations

import itertools

import pytest

from nightlab.config import KeepConfig
from nightlab.decide import Verdict, decide, deterministic, distinct, evidence_note, noise, threshold
from nightlab.types import Metric

MIN, MAX = Metric("loss", "minimize"), Metric("acc", "maximize")
K, D, C = Verdict.KEEP, Verdict.DISCARD, Verdict.CONFIRM


def keep(threshold: object = "auto", confirm: int = 1, sigmas: float = 2.0) -> KeepConfig:
    return KeepConfig(threshold=threshold, confirm=confirm, sigmas=sigmas)


# best = 4.0 known exactly (best_runs=None), sigma = 0.25, sigmas = 2 → one run: threshold 0.5 and the confirm
# band is gains in (0.25, 1.0); two runs: the standard error shrinks by sqrt(2), threshold 0.5/sqrt(2) ≈ 0.354
@pytest.mark.parametrize("runs, verdict", [
    ([2.0], K),  # a big win
    ([3.0], K),  # gain exactly 2 x threshold: outside the confirm band
    ([3.25], C),  # gain 0.75: above the threshold but marginal
    ([3.5], C),  # gain exactly the threshold: uncertain, so it gets a second run
    ([3.625], C),  # gain 0.375: under the threshold but above half of it: a second chance
    ([3.75], D),  # gain exactly half the threshold: inside the noise
    ([4.0], D),  # a tie
    ([5.0], D),  # worse
    ([3.25, 3.25], K),  # confirmed: the mean still beats the (smaller) threshold
    ([3.5, 3.75], K),  # mean 3.625: gain 0.375 > 0.354
    ([3.5, 4.0], D),  # mean 3.75: gain 0.25 < 0.354
    ([3.25, 4.25], D),  # the confirmation run was a loss
    ([3.25, 2.75], K),
])
def test_minimize_with_auto_threshold(runs: list[float], verdict: Verdict) -> None:
    d = decide(MIN, runs, 4.0, 0.25, keep())
    assert d.verdict == verdict
    assert d.value == sum(runs) / len(runs)
    assert d.improvement == 4.0 - d.value
    assert d.threshold == pytest.approx(0.5 / len(set(runs)) ** 0.5)  # identical runs count as one


@pytest.mark.parametrize("runs, verdict", [
    ([6.0], K), ([5.0], K), ([4.75], C), ([4.5], C), ([4.25], D), ([4.0], D), ([3.0], D),
    ([4.75, 4.75], K), ([4.75, 3.75], D),
])
def test_maximize_with_auto_threshold(runs: list[float], verdict: Verdict) -> None:
    d = decide(MAX, runs, 4.0, 0.25, keep())
    assert d.verdict == verdict
    assert d.improvement == d.value - 4.0


def test_the_threshold_counts_the_runs_behind_the_best() -> None:
    """The gain is a difference of two means: the best's own uncertainty widens the threshold."""
    # sigma 0.25; one candidate run against a best of 3 runs: se = 0.25 * sqrt(1 + 1/3)
    se = 0.25 * (4 / 3) ** 0.5
    assert threshold(keep(), 0.25, 1, 3) == pytest.approx(2 * se)
    assert decide(MIN, [3.5], 4.0, 0.25, keep(), best_runs=3).verdict == C  # 0.5 < 2 se ≈ 0.577
    assert decide(MIN, [3.5], 4.0, 0.25, keep(confirm=0), best_runs=3).verdict == D
    assert decide(MIN, [3.5], 4.0, 0.25, keep(confirm=0)).verdict == D  # 0.5 == the threshold: a tie with it
    assert decide(MIN, [3.4], 4.0, 0.25, keep(confirm=0)).verdict == K
    assert decide(MIN, [2.8], 4.0, 0.25, keep(), best_runs=3).verdict == K  # 1.2 > 2 x 0.577
    # more runs behind the best → a smaller threshold
    assert threshold(keep(), 0.25, 2, 10) < threshold(keep(), 0.25, 2, 3) < threshold(keep(), 0.25, 1, 3)


@pytest.mark.parametrize("goal", ["minimize", "maximize"])
@pytest.mark.parametrize("sigma", [None, 0.0])
def test_without_a_noise_estimate_any_strict_improvement_is_kept(goal: str, sigma: float | None) -> None:
    metric, sign = Metric("m", goal), (-1 if goal == "minimize" else 1)
    better, worse = 4.0 + sign * 0.0625, 4.0 - sign * 0.0625
    assert decide(metric, [better], 4.0, sigma, keep()).verdict == K  # no confirm band without a threshold
    assert decide(metric, [4.0], 4.0, sigma, keep()).verdict == D  # ties revert
    assert decide(metric, [worse], 4.0, sigma, keep()).verdict == D
    assert decide(metric, [better], 4.0, sigma, keep()).threshold == 0.0


@pytest.mark.parametrize("runs, verdict", [
    ([3.9375], D),  # gain 0.0625 < 0.125
    ([3.875], D),  # gain == threshold
    ([3.8125], C),  # gain 0.1875 in (0.125, 0.25)
    ([3.75], K),  # gain == 2 x threshold
    ([3.0], K),
])
def test_a_numeric_threshold_ignores_the_noise(runs: list[float], verdict: Verdict) -> None:
    for sigma in (None, 0.0, 0.25, 10.0):
        d = decide(MIN, runs, 4.0, sigma, keep(threshold=0.125))
        deterministic_code = sigma == 0.0  # a re-run would give the same number: no confirmation
        assert d.verdict == (K if verdict == C and deterministic_code else verdict), sigma
        assert d.threshold == 0.125


def test_a_zero_numeric_threshold_keeps_any_win_and_no_tie() -> None:
    assert decide(MIN, [3.999], 4.0, 0.25, keep(threshold=0.0)).verdict == K
    assert decide(MIN, [4.0], 4.0, 0.25, keep(threshold=0.0)).verdict == D
    assert decide(MAX, [4.001], 4.0, 0.25, keep(threshold=0.0)).verdict == K


def test_confirm_counts_the_extra_runs() -> None:
    assert decide(MIN, [3.25], 4.0, 0.25, keep(confirm=0)).verdict == K  # no confirmation configured
    assert decide(MIN, [3.25], 4.0, 0.25, keep(confirm=2)).verdict == C
    # two runs: threshold 0.354, band (0.177, 0.707): gain 0.5 is still uncertain with one confirmation left
    assert decide(MIN, [3.25, 3.75], 4.0, 0.25, keep(confirm=2)).verdict == C
    assert decide(MIN, [3.25, 3.25], 4.0, 0.25, keep(confirm=2)).verdict == K  # identical: one run's evidence, 0.75 > 0.5
    assert decide(MIN, [3.25, 3.25, 3.25], 4.0, 0.25, keep(confirm=2)).verdict == K
    # three runs: threshold 0.5/sqrt(3) ≈ 0.289; mean 3.75 → gain 0.25: discarded
    assert decide(MIN, [3.25, 3.75, 4.25], 4.0, 0.25, keep(confirm=2)).verdict == D


def test_sigmas_scales_the_auto_threshold() -> None:
    assert decide(MIN, [3.25], 4.0, 0.25, keep(sigmas=1.0)).verdict == K  # threshold 0.25, band (0.125, 0.5)
    assert decide(MIN, [3.25], 4.0, 0.25, keep(sigmas=4.0)).verdict == C  # threshold 1.0, band (0.5, 2.0)
    assert decide(MIN, [3.25], 4.0, 0.25, keep(sigmas=8.0)).verdict == D  # threshold 2.0, band (1.0, 4.0)
    assert decide(MIN, [3.25], 4.0, 0.25, keep(sigmas=0.0)).verdict == K  # threshold 0


@pytest.mark.parametrize("sigma, thr, confirm", list(itertools.product([None, 0.0, 0.01, 1.0], ["auto", 0.0, 0.5], [0, 1, 3])))
@pytest.mark.parametrize("metric", [MIN, MAX])
def test_a_change_that_does_nothing_is_never_kept(metric: Metric, sigma, thr, confirm) -> None:
    for runs in ([4.0], [4.0, 4.0], [4.0] * 4):
        assert decide(metric, runs, 4.0, sigma, keep(threshold=thr, confirm=confirm)).verdict == D


@pytest.mark.parametrize("runs, best, sigma", [([0.9], 1.0, None), ([0.97], 1.0, 0.01), ([1.2, 0.8], 1.0, 0.05),
                                               ([0.5], 1.0, 0.1), ([1.0], 1.0, 0.1)])
def test_the_goals_mirror_each_other(runs, best, sigma) -> None:
    lo = decide(MIN, runs, best, sigma, keep())
    hi = decide(MAX, [-r for r in runs], -best, sigma, keep())
    assert lo.verdict == hi.verdict
    assert lo.improvement == pytest.approx(hi.improvement)


def test_noise_is_the_sample_standard_deviation() -> None:
    assert noise([]) is None
    assert noise([1.0]) is None
    assert noise([1.0, 1.0, 1.0]) == 0.0
    assert noise([1.0, 2.0, 3.0]) == 1.0
    assert noise([1.03, 1.04, 1.05]) == pytest.approx(0.01)


def test_threshold() -> None:
    assert threshold(keep(), None) == 0.0
    assert threshold(keep(), 0.0) == 0.0
    assert threshold(keep(), 0.25) == 0.5
    assert threshold(keep(), 0.25, 4) == 0.25  # the standard error of a mean of 4 runs
    assert threshold(keep(sigmas=3), 0.25) == 0.75
    assert threshold(keep(threshold=0.2), None) == 0.2
    assert threshold(keep(threshold=0.2), 5.0) == 0.2


def test_metric_direction() -> None:
    assert MIN.improvement(0.9, 1.0) == pytest.approx(0.1) and MAX.improvement(0.9, 1.0) == pytest.approx(-0.1)
    assert MIN.better(0.9, 1.0) and not MIN.better(1.0, 1.0) and not MIN.better(1.1, 1.0)
    assert MAX.better(1.1, 1.0) and not MAX.better(1.0, 1.0)
    assert MIN.better(5.0, None) and MAX.better(5.0, None)
    assert MIN.best_of([3.0, 1.0, 2.0]) == 1.0 and MAX.best_of([3.0, 1.0, 2.0]) == 3.0
    assert MIN.best_of([]) is None


# -- evidence counting and evaluation noise (per-example values) ----------------------------------------------
def test_a_tie_by_rounding_is_not_a_keep() -> None:
    """Five identical baseline runs of 0.22 summed naively are 0.22 + 2.8e-17: the same value must not win."""
    naive = sum([0.22] * 5) / 5
    assert naive != 0.22
    for sigma in (0.0, None):
        assert decide(Metric("val_err"), [0.22], naive, sigma, KeepConfig(), 5).verdict == D
    assert decide(Metric("val_err", "maximize"), [naive], 0.22, 0.0, KeepConfig(), 5).verdict == D
    assert decide(Metric("val_err"), [0.2199], naive, 0.0, KeepConfig(), 5).verdict == K  # a real, if tiny, gain
    assert decide(Metric("mse"), [1e-12], 2e-12, 0.0, KeepConfig(), 1).verdict == K  # small metrics are not ties
    assert decide(Metric("mse"), [0.0], 0.0, 0.0, KeepConfig(), 1).verdict == D


def test_identical_runs_count_as_one() -> None:
    assert distinct([1.0, 1.0, 1.0]) == 1 and distinct([1.0, 2.0, 1.0]) == 2
    assert deterministic([1.0, 1.0]) and not deterministic([1.0]) and not deterministic([1.0, 1.0 + 1e-12])
    assert threshold(keep(), 0.25, distinct([3.0] * 4)) == threshold(keep(), 0.25, 1)


def test_no_confirmation_is_spent_where_a_rerun_gives_the_same_number() -> None:
    # deterministic code (sigma 0): nothing to confirm, whatever the per-example error says
    assert decide(MIN, [3.875], 4.0, 0.0, keep(confirm=2), eval_se=0.0625).verdict == D  # 0.125: a tie with it
    assert decide(MIN, [3.8125], 4.0, 0.0, keep(confirm=2), eval_se=0.0625).verdict == K
    # seed noise exists but this candidate's two runs agree exactly: a third cannot help
    assert decide(MIN, [3.625], 4.0, 0.25, keep(confirm=2)).verdict == C
    assert decide(MIN, [3.625, 3.625], 4.0, 0.25, keep(confirm=2)).verdict == D  # 0.375 < threshold 0.5


def test_evaluation_noise_and_seed_noise_add_in_variance() -> None:
    # seed se 0.25 * sqrt(1 + 1) = 0.354, eval se 0.354: total 0.5, threshold 1.0
    d = decide(MIN, [2.95], 4.0, 0.25, keep(confirm=0), best_runs=1, eval_se=0.25 * 2 ** 0.5)
    assert d.se == pytest.approx(0.5) and d.threshold == pytest.approx(1.0) and d.verdict == K
    assert decide(MIN, [3.05], 4.0, 0.25, keep(confirm=0), best_runs=1, eval_se=0.25 * 2 ** 0.5).verdict == D
    # the evaluation noise alone sets the threshold for deterministic code
    assert decide(MIN, [3.0], 4.0, 0.0, keep(), eval_se=0.6).threshold == pytest.approx(1.2)
    assert decide(MIN, [3.0], 4.0, None, keep(confirm=0), eval_se=0.6).verdict == D
    assert decide(MIN, [3.0], 4.0, None, keep(), eval_se=0.6).verdict == C  # seed noise unknown: a re-run may differ
    # a numeric threshold stays a number
    assert decide(MIN, [3.0], 4.0, 0.0, keep(threshold=0.5), eval_se=0.6).verdict == K


def test_the_evidence_note_says_when_the_rule_is_a_plain_gate() -> None:
    assert "plain 'better than the best' gate" in evidence_note(0.0, True, False)
    assert "deterministic" in evidence_note(0.0, True, False)
    assert "noise_runs = 1" in evidence_note(None, False, False)
    assert "no noise measured" not in evidence_note(0.01, False, False)
    assert "evaluation noise (which examples" in evidence_note(0.01, False, False)
    assert "paired per-example" in evidence_note(0.0, True, True) and "deterministic" in evidence_note(0.0, True, True)
