"""Screening ([search] screen_budget_s): a short run first; a candidate clearly worse there is screened out without
its full runs; the others are judged at the full budget by the keep rule. Real runs, real ledger, real CLI."""

from __future__ import annotations

import pytest
from nlkit import TRAIN, idea, make_project, sub

from nightlab.config import Config

# LATE is a change that loses at the short budget and wins at the full one (a longer warm-up, say).
TRAIN_BUDGETED = TRAIN.replace("NOISE = 0.0", "NOISE = 0.01\nLATE = 0.0").replace(
    'seed = int(', 'full = float(os.environ["NIGHTLAB_BUDGET_S"]) >= 1\nseed = int(').replace(
    "* ((seed % 3) - 1)", "* ((seed % 3) - 1) + (-LATE if full else LATE)")
CONFIG = {"keep": {"noise_runs": 3, "confirm": 0}, "run": {"budget_s": 1, "timeout_s": 30, "grace_s": 0.5},
          "search": {"screen_budget_s": 0.5}}


def test_screening_discards_the_clearly_worse_and_judges_the_rest_at_the_full_budget(tmp_path) -> None:
    proj = make_project(tmp_path, train=TRAIN_BUDGETED, config=CONFIG, ideas=[
        idea("worse everywhere", sub("LR = 0.1", "LR = 0.0")),  # +0.05, beyond 2σ·sqrt(1 + 1/3) = 0.023
        idea("a clear win", sub("BONUS = 0.0", "BONUS = 0.3")),
        idea("a late bloomer", sub("LATE = 0.0", "LATE = 0.2")),  # screening's blind spot: lost at 0.5 s
    ])
    proj.run("--max-trials", "3")
    base, worse, win, late = proj.log_json()
    assert base["runs"] == pytest.approx([1.03, 1.04, 1.05]) and base["screen"] == pytest.approx(1.04)
    assert float(proj.rows("SELECT value FROM meta WHERE key = 'screen_noise'")[0]["value"]) == pytest.approx(0.01)

    assert worse["status"] == "discard" and worse["reason"].startswith("screened out at 0.5s")
    assert worse["runs"] == [] and worse["metric"] is None and worse["screen"] == pytest.approx(1.09)
    assert worse["seconds"] > 0  # its short run's compute counts

    assert win["status"] == "keep" and win["screen"] == pytest.approx(0.75)  # seed 2000: +σ
    assert win["runs"] == pytest.approx([0.73])  # seed 2001: -σ; the full-budget runs alone decide

    assert late["status"] == "discard" and late["reason"].startswith("screened out")
    # against the kept trial's own short run (one run each side): the margin is 2σ·sqrt(2)
    assert "0.028" in late["reason"]

    assert proj.nl("report", "--tag", "t").returncode == 0
    html = (proj.state() / "report.html").read_text()
    assert "<span>screened out</span><b>2</b>" in html and "screen 1.09" in html  # both fidelities shown

    runs = proj.rows("SELECT trial, k FROM runs ORDER BY trial, k")
    assert [(r["trial"], r["k"]) for r in runs] == [(0, k) for k in range(6)] + [(1, 0), (2, 0), (2, 1), (3, 0)]


def test_without_screening_a_late_bloomer_is_kept(tmp_path) -> None:
    proj = make_project(tmp_path, train=TRAIN_BUDGETED, config=CONFIG | {"search": {"screen_budget_s": 0}},
                        ideas=[idea("a late bloomer", sub("LATE = 0.0", "LATE = 0.2"))])
    proj.run("--max-trials", "1")
    base, late = proj.log_json()
    assert base["screen"] is None and late["screen"] is None and late["status"] == "keep"


def test_a_screen_budget_not_shorter_than_the_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="screen_budget_s"):
        Config.model_validate({"run": {"budget_s": 5}, "search": {"screen_budget_s": 5}})


def test_the_rule_against_the_baseline_and_a_kept_best(tmp_path) -> None:
    from nightlab.ledger import Ledger, TrialRecord
    from nightlab.screening import screened_out

    cfg = Config.model_validate({"run": {"budget_s": 4}, "search": {"screen_budget_s": 1}})
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        assert screened_out(cfg, ledger, 99.0) == ""  # no baseline yet: nothing to screen against
        ledger.save(TrialRecord(0, "baseline", metric=1.0, runs=[1.0, 1.0], screen=2.0))
        ledger.set_meta(screen_noise=None, screen_runs=1)
        assert screened_out(cfg, ledger, 99.0) == ""  # one short run: its noise is unknown
        ledger.set_meta(screen_noise=0.1, screen_runs=4)  # margin 2 × 0.1 × sqrt(1 + 1/4) = 0.2236
        assert screened_out(cfg, ledger, 2.22) == "" and screened_out(cfg, ledger, 2.23).startswith("screened out")
        ledger.save(TrialRecord(1, "keep", metric=0.9, runs=[0.9], screen=1.5))  # one run: 2 × 0.1 × sqrt(2)
        assert screened_out(cfg, ledger, 1.78) == "" and "0.283" in screened_out(cfg, ledger, 1.79)
        ledger.set_meta(screen_noise=0.0)  # deterministic: any loss is real
        assert screened_out(cfg, ledger, 1.5) == "" and screened_out(cfg, ledger, 1.5001)
    finally:
        ledger.close()
