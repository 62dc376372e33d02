"""program.md phases, their gates, and the brief for a known ledger (a snapshot kept in tests/snapshots/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nightlab import program
from nightlab.agents import clirun, toolloop
from nightlab.config import Config
from nightlab.ledger import TrialRecord

SNAPSHOT = Path(__file__).parent / "snapshots" / "brief.md"
PROGRAM = """# Program

Make val_loss smaller. Never touch prepare.py.

## Phase 1 — Hyperparameters

Tune LR and the batch size.

### Phase 2 — Architecture

Width, depth, activation.

## Phase 3: Moonshots

Anything from a paper.
"""


def config(tmp_path: Path, **phases: int) -> Config:
    (tmp_path / "program.md").write_text(PROGRAM)
    cfg = Config.model_validate({"metric": {"name": "val_loss", "constraints": [{"name": "peak_memory_gb", "max": 20}]},
                                 "run": {"budget_s": 60, "timeout_s": 120}, "phases": phases})
    cfg.path = tmp_path / "nightlab.toml"
    return cfg


def ledger(statuses: list[str], phase: str = "1 Hyperparameters") -> list[TrialRecord]:
    return [TrialRecord(n=i, status=s, metric=1.0 - 0.01 * i, phase=phase, description=f"idea {i}")
            for i, s in enumerate(statuses)]


def label(cfg: Config, trials: list[TrialRecord]) -> str:
    phase = program.current_phase(program.read_program(cfg)[1], trials, cfg)
    return phase.label if phase else ""


def test_headings_of_both_levels_and_separators_make_phases() -> None:
    general, phases = program.parse(PROGRAM)
    assert [p.label for p in phases] == ["1 Hyperparameters", "2 Architecture", "3 Moonshots"]
    assert general.startswith("# Program") and "Tune LR" in phases[0].body
    assert program.parse("just text") == ("just text", [])


@pytest.mark.parametrize(("gates", "statuses", "want"), [
    ({}, ["baseline"] + ["discard"] * 9, "1 Hyperparameters"),  # no gates: stay
    ({"trials": 3}, ["baseline", "keep", "discard"], "1 Hyperparameters"),
    ({"trials": 3}, ["baseline", "keep", "discard", "discard"], "2 Architecture"),
    ({"plateau": 2}, ["baseline", "discard", "keep", "discard"], "1 Hyperparameters"),  # a keep resets the streak
    ({"plateau": 2}, ["baseline", "discard", "keep", "discard", "crash"], "2 Architecture"),
])
def test_phase_gates(tmp_path: Path, gates: dict, statuses: list[str], want: str) -> None:
    assert label(config(tmp_path, **gates), ledger(statuses)) == want


def test_the_last_phase_is_final(tmp_path: Path) -> None:
    assert label(config(tmp_path, trials=1), ledger(["baseline", "keep", "keep"], "3 Moonshots")) == "3 Moonshots"


def test_brief_snapshot(tmp_path: Path) -> None:
    cfg = config(tmp_path, trials=3)
    trials = ledger(["baseline", "keep", "discard", "crash"])
    trials[3].metric, trials[3].reason, trials[3].description = None, "exit code 1", ""
    trials[2].delta = 0.002
    (tmp_path / "train.py").write_text("LR = 0.1\nprint(f'val_loss: {LR}')\n")
    brief = program.brief(cfg, 4, trials, best=0.99, noise=0.001, scratchpad=program.SCRATCHPAD,
                          failure_tail="Traceback (most recent call last):\nZeroDivisionError", workdir=tmp_path,
                          reply=toolloop.ToolLoopAgent.reply)
    assert brief.phase == "2 Architecture" and brief.editable == ["train.py"] and brief.best == 0.99
    if os.environ.get("NIGHTLAB_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(brief.text)
    assert brief.text == SNAPSHOT.read_text(), "the brief changed: rerun with NIGHTLAB_UPDATE_SNAPSHOTS=1 and review"


def test_the_brief_closes_with_the_agents_own_reply_instructions(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "train.py").write_text("LR = 0.1\n")
    def closing(reply: str) -> str:
        text = program.brief(cfg, 1, ledger(["baseline"]), 1.0, None, "", "", workdir=tmp_path, reply=reply).text
        return text.rsplit("\n## ", 1)[1]

    api = closing(toolloop.ToolLoopAgent.reply)  # API agents end with the finish tool, and never with prose lines
    assert api.startswith("Reply\n\n") and "call `finish`" in api and "DESCRIPTION" not in api
    cli = closing(clirun.REPLY)  # CLI agents have no finish tool: their last lines carry the description
    assert cli.startswith("Reply\n\n") and "DESCRIPTION:" in cli and "HYPOTHESIS:" in cli and "finish" not in cli
    assert "## Reply" not in program.brief(cfg, 1, ledger(["baseline"]), 1.0, None, "", "").text  # optuna, scripted
    assert "finish" not in clirun.system_prompt(cfg) and "DESCRIPTION:" in clirun.system_prompt(cfg)


def test_small_editable_files_are_shown_in_the_brief(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    def shown(size: int) -> bool:
        (tmp_path / "train.py").write_text("# pad\n" * (size // 6))
        text = program.brief(cfg, 1, ledger(["baseline"]), 1.0, None, "", "", workdir=tmp_path, reply="R").text
        return "### train.py\n\n````python\n# pad" in text

    assert shown(program.INLINE_BYTES - 100) and not shown(program.INLINE_BYTES + 100)


def test_without_phases_the_brief_needs_only_the_last_trials(tmp_path: Path) -> None:
    # Lab.brief reads only the last RECENT + slots + 1 trials when program.md has no phases: the brief must be the
    # same as from the whole ledger, however long it is.
    assert program.has_phases(config(tmp_path))
    cfg = config(tmp_path)
    (tmp_path / "program.md").write_text("# Program\n\nMake val_loss smaller.\n")
    assert not program.has_phases(cfg)
    trials = ledger(["baseline"] + ["discard", "keep", "crash"] * 30, phase="")
    window = program.RECENT + cfg.executor.slots + 1
    whole, windowed = (program.brief(cfg, len(trials), t, best=0.5, noise=None, scratchpad="", failure_tail="")
                       for t in (trials, trials[-window:]))
    assert windowed.text == whole.text and f"| {len(trials) - program.RECENT} |" in whole.text
