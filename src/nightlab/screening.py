"""Screening (`[search] screen_budget_s`): a proposal first trains once at a short budget, and one that is clearly
worse than the best there is discarded as "screened out" without its full-budget runs.

The rule. The baseline runs its noise runs at the short budget too (after its full ones), which gives the mean
and the seed noise σ_s at that budget. The best's short-budget value is the baseline's mean, or the short run of
the kept trial that is the best now (one run; when the best has none, e.g. after a rebase, the baseline's mean
stands in, which is lenient since the best is better than the baseline). A candidate's single short run x is
screened out when it is worse than that reference r by more than

    screen_sigmas × σ_s × sqrt(1 + 1/n_r)

(n_r: the runs r is the mean of): the standard error of one run against r's mean, so an equal candidate is thrown
out by noise alone with probability about 2.3% at the default 2σ (one-sided, normal noise). Every other candidate
runs at the full budget and is decided by the keep rule there, as without screening; its short value is recorded.

When screening misleads: it ranks changes by their value at the short budget, and some changes only pay off late.
A higher learning rate or a shorter warm-up wins early and may lose at the full budget (passed on wrongly, which
costs only compute, since the full runs decide); a lower learning rate, a longer warm-up or warm-down, a bigger
model or more regularisation lose early and win late, and those are screened out for good. A training script
whose schedule is defined in steps rather than in fractions of its budget behaves differently at each budget, and
the short runs say little. Choose a short budget at which the baseline's curve has settled, and see
`nightlab log --json` ("screen") for the two fidelities side by side.
"""

from __future__ import annotations

import math

from nightlab.config import Config
from nightlab.errors import UsageError
from nightlab.ledger import Ledger


def budget(cfg: Config) -> float | None:
    """The screening budget in seconds, None when screening is off."""
    short = cfg.search.screen_budget_s
    if not short:
        return None
    if short >= cfg.run.budget_s:  # the config file is checked on load; a --budget flag may undercut it
        raise UsageError(f"search.screen_budget_s ({short:g}) must be shorter than run.budget_s "
                         f"({cfg.run.budget_s:g})")
    return short


def reference(ledger: Ledger) -> tuple[float, int] | None:
    """The best's value at the short budget and how many runs it is the mean of; None: not measured."""
    best, base, runs = ledger.best(), ledger.trial(0), int(ledger.get("screen_runs") or 0)
    if best is not None and best.n != 0 and best.screen is not None:
        return best.screen, 1
    if base is not None and base.screen is not None and runs:
        return base.screen, runs
    return None


def screened_out(cfg: Config, ledger: Ledger, value: float) -> str:
    """Why a candidate with short-budget value `value` is screened out; "" when it goes on to the full budget."""
    ref = reference(ledger)
    if ref is None:
        return ""
    best, n_ref = ref
    sigma = ledger.get("screen_noise")  # 0.0 for deterministic code: any loss is real
    if sigma is None:
        return ""  # one baseline run at that budget (keep.noise_runs = 1): its noise is unknown, nothing is screened
    margin = cfg.search.screen_sigmas * sigma * math.sqrt(1 + 1 / n_ref)
    worse = value - best if cfg.metric.goal == "minimize" else best - value
    if not math.isfinite(value) or worse > margin:
        return (f"screened out at {cfg.search.screen_budget_s:g}s: {cfg.metric.name} {value:.5g} vs the best's "
                f"{best:.5g} there, worse by {worse:.3g} > {cfg.search.screen_sigmas:g}σ ({margin:.3g})")
    return ""
