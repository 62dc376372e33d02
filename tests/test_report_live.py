"""The live view of `nightlab run`: a rich panel on a terminal (a real pty), plain lines elsewhere."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from nightlab.config import Config
from nightlab.ledger import TrialRecord
from nightlab.report.live import LiveView
from nlkit import CLI, TRAIN, idea, in_pty, make_project, screen_lines, sub


def _view(tmp_path: Path, terminal: bool, **limits) -> tuple[LiveView, list[tuple[str, int]], io.StringIO]:
    cfg = Config(path=tmp_path / "nightlab.toml")
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=120, color_system=None)
    printed: list[tuple[str, int]] = []
    return LiveView(cfg, "night", console, lambda e, r: printed.append((e, r.n)), **limits), printed, out


def _text(view: LiveView) -> str:
    console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
    console.print(view)
    return console.export_text()


def test_the_panel_shows_the_trial_the_phase_the_budget_the_best_and_the_last_outcomes(tmp_path: Path) -> None:
    view, printed, _ = _view(tmp_path, terminal=True, max_trials=4)
    with view:
        view("run", TrialRecord(n=0, description="baseline", phase="1 Hyperparameters"))
        view("done", TrialRecord(n=0, status="baseline", metric=1.0, runs=[1.0, 1.01], phase="1 Hyperparameters"))
        view("done", TrialRecord(n=1, status="keep", metric=0.9, delta=-0.1, description="raise LR"))
        view("done", TrialRecord(n=2, status="crash", reason="exit code 3"))
        view("propose", TrialRecord(n=3, phase="2 Architecture"))
        assert "trial 3: asking the agent" in _text(view)
        view("run", TrialRecord(n=3, description="wider MLP", phase="2 Architecture"))
        text = _text(view)
    assert "nightlab run · night" in text
    assert "trial 3: running · wider MLP  (phase 2 Architecture)" in text
    assert re.search(r"trials .*━.* 2/4", text)  # the run's budget: trials
    assert re.search(r"run +\d+/300 s", text)  # the current training run against [run] budget_s (just started)
    assert "val_bpb 0.9  trial 1, baseline 1 (-10.0%)" in text and "1 kept of 2" in text
    assert "0:baseline 1:keep 2:crash" in text
    assert printed == [("done", 0), ("done", 1), ("done", 2)]  # finished trials still get their line


def test_without_a_terminal_every_event_is_one_plain_line(tmp_path: Path) -> None:
    view, printed, out = _view(tmp_path, terminal=False, hours=2)
    with view:
        for event, n in (("propose", 1), ("run", 1), ("confirm", 1), ("done", 1)):
            view(event, TrialRecord(n=n))
    assert printed == [("propose", 1), ("run", 1), ("confirm", 1), ("done", 1)]
    assert out.getvalue() == ""  # no panel, no control codes


def test_a_run_in_a_terminal_shows_the_live_panel(tmp_path: Path) -> None:
    slow = TRAIN.replace("seed = int", "import time\ntime.sleep(0.6)\nseed = int")
    proj = make_project(tmp_path, train=slow, ideas=[idea("raise LR to 0.3", sub("LR = 0.1", "LR = 0.3")),
                                                     idea("lower LR", sub("LR = 0.3", "LR = 0.2"))])
    env = proj.env | {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    code, raw = in_pty([*CLI, "run", "--tag", "t", "--max-trials", "2"], proj.dir, env)
    assert code == 0, raw
    screen = "\n".join(screen_lines(raw))
    assert "nightlab run · t" in screen and "━" in screen  # the panel and its progress bars
    assert re.search(r"trial 1: running · raise LR to 0.3", screen)
    assert re.search(r"trial +1 +keep ", screen) and re.search(r"trial +2 +discard ", screen)
    assert "stopped: reached --max-trials 2" in screen
