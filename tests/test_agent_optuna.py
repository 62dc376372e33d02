"""OptunaAgent: TPE over train.py's UPPER_CASE constants, persisted in SQLite, rewriting only value text."""

from __future__ import annotations

import ast
import difflib
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from nightlab.agents.constants import find_constants, format_float
from nightlab.agents.optuna import OptunaAgent
from nightlab.config import Config, SearchParam
from nightlab.errors import UsageError
from nightlab.types import Brief, Metric, Status

TRAIN = '''"""A toy training script."""
import math

SEED = 1337                # never searched by default
DATA_PATH = "data/"        # nor paths
TIME_BUDGET = 300
LR = 3e-4                  # learning rate
WEIGHT_DECAY: float = 0.1  # annotated
DEPTH = 6
BATCH_SIZE = 64            # a power of two
USE_BIAS = True
ACTIVATION = "relu"        # strings only with choices
SHAPE = (3, 32, 32)        # tuples are skipped
WARMUP = -2                # negative int
lower_case = 5
NAMES = ["a"]


def main() -> float:
    depth = DEPTH  # uses the constants
    return LR * depth * BATCH_SIZE * math.e + WEIGHT_DECAY + USE_BIAS + len(ACTIVATION) + WARMUP
'''
SEARCHED = {"LR", "WEIGHT_DECAY", "DEPTH", "BATCH_SIZE", "USE_BIAS", "WARMUP"}


def brief(n: int, goal: str = "minimize") -> Brief:
    return Brief(trial=n, text="", editable=["train.py"], metric=Metric("val_loss", goal), best=None, noise=None)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text(TRAIN)
    return tmp_path


def config(project: Path, knobs: int = 0, **search: SearchParam) -> Config:
    cfg = Config()
    cfg.path = project / "nightlab.toml"
    cfg.metric.name = "val_loss"
    cfg.agent.search = search
    cfg.agent.knobs = knobs
    return cfg


def workspace(project: Path) -> Path:
    """A fresh copy of the project's train.py, as the harness would give for one trial."""
    ws = project / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "train.py").write_text(TRAIN)
    return ws


def study(project: Path) -> optuna.Study:
    return optuna.load_study(study_name="nightlab", storage=f"sqlite:///{project / 'state' / 'optuna.sqlite'}")


def told(project: Path) -> list[optuna.trial.FrozenTrial]:
    """The study's trials less the failed asks (a sample equal to the current values is failed and asked again)."""
    return [t for t in study(project).trials if t.state != optuna.trial.TrialState.FAIL]


def test_constant_discovery() -> None:
    consts = find_constants(TRAIN.encode())
    assert set(consts) == {"SEED", "DATA_PATH", "TIME_BUDGET", "LR", "WEIGHT_DECAY", "DEPTH", "BATCH_SIZE"} | {
        "USE_BIAS",
        "ACTIVATION",
        "WARMUP",
    }
    assert (consts["LR"].value, consts["LR"].text) == (3e-4, "3e-4")
    assert (consts["WARMUP"].value, consts["WARMUP"].text) == (-2, "-2")
    assert consts["WEIGHT_DECAY"].value == 0.1 and consts["ACTIVATION"].text == '"relu"'
    assert "X" not in find_constants(b"X = 1\nX = 2\n")  # bound twice: which one to edit is a guess
    assert find_constants("É = 1\nNAME = 'é'; LR = 0.5\n".encode())["LR"].text == "0.5"  # byte offsets


def test_float_format() -> None:
    assert [format_float(x) for x in (3e-4, 0.0123, 2.5, 3.0, 1.5e6, 1e-5, -3.16227e-4)] == [
        "3e-4", "0.0123", "2.5", "3.0", "1.5e6", "1e-5", "-3.16e-4",
    ]  # fmt: skip


def test_rewrite_changes_only_value_text(project: Path) -> None:
    agent = OptunaAgent(config(project), project / "state")
    ws = workspace(project)
    proposal = agent.propose(ws, brief(1))
    new = (ws / "train.py").read_text()
    assert set(proposal.params) == SEARCHED
    changed = 0
    for old_line, new_line in _changed_lines(TRAIN, new):
        name = old_line.split()[0].rstrip(":")
        assert name in SEARCHED
        old_value = find_constants(TRAIN.encode())[name].text
        new_value = find_constants(new.encode())[name].text
        # Everything around the value (name, annotation, spacing, comment) is byte-identical.
        assert old_line.replace(old_value, "\0", 1) == new_line.replace(new_value, "\0", 1)
        assert ast.literal_eval(new_value) == proposal.params[name]
        changed += 1
    assert changed == len(proposal.description.split(", "))
    assert len(new.splitlines()) == len(TRAIN.splitlines())


def _changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    diff = list(difflib.ndiff(old.splitlines(), new.splitlines()))
    removed = [line[2:] for line in diff if line.startswith("- ")]
    added = [line[2:] for line in diff if line.startswith("+ ")]
    assert len(removed) == len(added)
    return list(zip(removed, added))


def test_description_lists_only_changed_constants(project: Path) -> None:
    agent = OptunaAgent(config(project), project / "state")
    ws = workspace(project)
    proposal = agent.propose(ws, brief(1))
    now = find_constants((ws / "train.py").read_bytes())
    parts = proposal.description.split(", ")
    assert parts
    for part in parts:
        m = re.fullmatch(r"([A-Z_]+) (\S+) → (\S+)", part)
        assert m, part
        name, old, new = m.groups()
        assert old == find_constants(TRAIN.encode())[name].text and new == now[name].text and old != new


def test_default_space(project: Path) -> None:
    agent = OptunaAgent(config(project), project / "state")
    agent.observe(0, Status.BASELINE, 2.0)
    space = study(project).user_attrs["nightlab_space"]
    assert set(space) == SEARCHED
    assert space["LR"] == {"file": "train.py", "name": "LR", "baseline": 3e-4, "kind": "float"} | {
        "low": 3e-4 / 4, "high": 3e-4 * 4, "log": True,
    }  # fmt: skip
    assert space["WEIGHT_DECAY"]["high"] < 1  # a fraction stays below 1
    assert (space["DEPTH"]["low"], space["DEPTH"]["high"]) == (3, 9)
    assert space["BATCH_SIZE"]["choices"] == [16, 32, 64, 128, 256]
    assert space["USE_BIAS"]["choices"] == [False, True]
    assert (space["WARMUP"]["low"], space["WARMUP"]["high"]) == (-3, -1)


def test_baseline_is_trial_zero_once(project: Path) -> None:
    agent = OptunaAgent(config(project), project / "state")
    agent.observe(0, Status.BASELINE, 2.0)
    agent.observe(0, Status.BASELINE, 2.1)  # e.g. repeated noise runs
    OptunaAgent(config(project), project / "state").observe(0, Status.BASELINE, 2.0)  # and after a resume
    trials = study(project).trials
    assert len(trials) == 1
    assert trials[0].number == 0 and trials[0].value == 2.0
    assert trials[0].state == optuna.trial.TrialState.COMPLETE
    assert trials[0].params == {"LR": 3e-4, "WEIGHT_DECAY": 0.1, "DEPTH": 6, "BATCH_SIZE": 64} | {
        "USE_BIAS": True, "WARMUP": -2,
    }  # fmt: skip


def test_resumed_agent_continues_the_same_study(project: Path) -> None:
    agent = OptunaAgent(config(project), project / "state")
    agent.observe(0, Status.BASELINE, 2.0)
    first = agent.propose(workspace(project), brief(1))
    agent.observe(1, Status.DISCARD, 2.5)
    resumed = OptunaAgent(config(project), project / "state")
    resumed.observe(0, Status.BASELINE, 2.0)
    second = resumed.propose(workspace(project), brief(2))
    resumed.observe(2, Status.KEEP, 1.5)
    trials = [t for t in study(project).trials if t.state != optuna.trial.TrialState.FAIL]  # FAIL: a duplicate
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert [t.value for t in trials] == [2.0, 2.5, 1.5]
    assert sum(bool(t.user_attrs.get("nightlab_baseline")) for t in trials) == 1
    assert second.params != first.params  # the reseeded sampler does not replay the first point


def test_reproposing_a_trial_reuses_its_params(project: Path) -> None:
    agent = OptunaAgent(config(project), project / "state")
    agent.observe(0, Status.BASELINE, 2.0)
    first = agent.propose(workspace(project), brief(1))
    again = OptunaAgent(config(project), project / "state").propose(workspace(project), brief(1))  # a resume
    assert (again.params, again.description) == (first.params, first.description)
    trials = [t for t in study(project).trials if t.state != optuna.trial.TrialState.FAIL]
    assert len(trials) == 2 and trials[1].state == optuna.trial.TrialState.RUNNING


def test_a_lost_trial_is_told_as_failed_not_penalised(project: Path) -> None:
    agent = OptunaAgent(config(project), project / "state")
    agent.observe(0, Status.BASELINE, 2.0)
    agent.propose(workspace(project), brief(1))
    agent.observe(1, Status.LOST, None)  # the loop already retried it: the infrastructure failed, not the point
    trials = study(project).trials
    assert trials[1].state == optuna.trial.TrialState.FAIL
    assert not study(project).user_attrs.get("nightlab_penalized")


def test_crash_is_told_as_a_penalty(project: Path) -> None:
    agent = OptunaAgent(config(project), project / "state")
    agent.observe(0, Status.BASELINE, 2.0)
    agent.propose(workspace(project), brief(1))
    agent.observe(1, Status.DISCARD, 3.0)
    agent.propose(workspace(project), brief(2))
    agent.observe(2, Status.CRASH, None)
    agent.propose(workspace(project), brief(3))
    agent.observe(3, Status.TIMEOUT, None)
    agent.observe(3, Status.DISCARD, 1.0)  # already told: ignored
    agent.observe(99, Status.KEEP, 1.0)  # not ours: ignored
    values = [t.value for t in told(project)]
    # Worse than the worst real result (3.0) by a tenth of the spread, and penalties do not compound.
    assert values == [2.0, 3.0, pytest.approx(3.1), pytest.approx(3.1)]


def test_crash_before_any_result_is_a_failure(project: Path) -> None:
    agent = OptunaAgent(config(project), project / "state")
    agent.propose(workspace(project), brief(1))
    agent.observe(1, Status.CRASH, None)
    assert study(project).trials[-1].state == optuna.trial.TrialState.FAIL


def test_maximize_penalty_is_below_the_worst(project: Path) -> None:
    cfg = config(project)
    cfg.metric.goal = "maximize"
    agent = OptunaAgent(cfg, project / "state")
    agent.observe(0, Status.BASELINE, 0.5)
    agent.propose(workspace(project), brief(1, "maximize"))
    agent.observe(1, Status.INVALID, 0.9)  # a rule-breaking run's metric is not learned from
    assert told(project)[1].value == pytest.approx(0.45)


def test_config_overrides_ranges_and_choices(project: Path) -> None:
    search = {
        "LR": SearchParam(low=0.1, high=0.2, log=False),
        "ACTIVATION": SearchParam(choices=["gelu", "silu"]),
        "SEED": SearchParam(low=1, high=5),
        "DEPTH": SearchParam(choices=[2, 3]),
    }
    agent = OptunaAgent(config(project, **search), project / "state")
    agent.observe(0, Status.BASELINE, 2.0)
    base = study(project).trials[0].params
    # Originals outside a configured range or choice list cannot be held by optuna: left out of the baseline.
    assert set(base) == SEARCHED - {"LR", "DEPTH"}
    for n in range(1, 4):
        p = agent.propose(workspace(project), brief(n)).params
        assert 0.1 <= p["LR"] <= 0.2 and p["ACTIVATION"] in ("gelu", "silu") and p["DEPTH"] in (2, 3)
        assert 1 <= p["SEED"] <= 5 and isinstance(p["SEED"], int)
        agent.observe(n, Status.DISCARD, 2.0 + n)
    text = (project / "ws" / "train.py").read_text()
    assert f'ACTIVATION = "{p["ACTIVATION"]}"        # strings' in text  # quote style kept


def test_bad_override_is_a_usage_error(project: Path) -> None:
    agent = OptunaAgent(config(project, LR=SearchParam(low=0.0, high=1.0, log=True)), project / "state")
    with pytest.raises(UsageError, match="agent.search.LR"):
        agent.propose(workspace(project), brief(1))


def test_nothing_to_search_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("SEED = 1\nNAME = 'x'\n")
    cfg = config(tmp_path)
    with pytest.raises(UsageError, match="no searchable"):
        OptunaAgent(cfg, tmp_path / "state").propose(tmp_path, brief(1))


def test_importing_agents_does_not_import_optuna() -> None:
    code = "import sys, nightlab.agents, nightlab.agents.optuna; print('optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_missing_optuna_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['optuna'] = None\n"  # makes `import optuna` fail as if not installed
        "from pathlib import Path\nfrom nightlab.config import Config\nfrom nightlab.agents import load_agent\n"
        "from nightlab.errors import UsageError\n"
        "try:\n    load_agent('optuna', Config(), Path(sys.argv[1]))\nexcept UsageError as e:\n    print(e)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert "nightlab[optuna]" in run.stdout


def changed(description: str) -> dict[str, tuple[str, str]]:
    """{constant: (old text, new text)} from a proposal's description."""
    out = {}
    for part in description.split(", "):
        m = re.fullmatch(r"([A-Z_]+) (\S+) → (\S+)", part)
        assert m, part
        out[m.group(1)] = (m.group(2), m.group(3))
    return out


def test_a_small_move_changes_one_to_three_constants_near_their_values(project: Path) -> None:
    agent = OptunaAgent(config(project, knobs=3), project / "state")
    agent.observe(0, Status.BASELINE, 2.0)
    space = study(project).user_attrs["nightlab_space"]
    counts = set()
    for n in range(1, 9):
        ws = workspace(project)
        moved = changed(agent.propose(ws, brief(n)).description)
        counts.add(len(moved))
        now, before_all = find_constants((ws / "train.py").read_bytes()), find_constants(TRAIN.encode())
        assert {k for k in now if now[k].text != before_all[k].text} == set(moved)  # exactly the described ones
        for name, (old, new) in moved.items():
            before, after = ast.literal_eval(old), ast.literal_eval(new)
            if name == "LR":  # a quarter of the log range either way: a factor 16 ** 0.25 = 2 at most
                assert before / 2.01 <= after <= before * 2.01
            elif name == "DEPTH":  # range 3..9: a quarter is 1.5 either way
                assert abs(after - before) <= 2
            elif name == "BATCH_SIZE":  # the next power of two up or down
                assert after in (32, 128)
            elif name == "USE_BIAS":
                assert after is False
        agent.observe(n, Status.DISCARD, 2.0 + n / 10)
    assert counts <= {1, 2, 3} and len(counts) > 1
    assert all(t.user_attrs["nightlab_moved"] for t in told(project)[1:])
    assert space["LR"]["high"] / space["LR"]["low"] == pytest.approx(16)


def test_a_rebased_move_keeps_its_values_on_the_new_best(project: Path) -> None:
    agent = OptunaAgent(config(project, knobs=3), project / "state")
    agent.observe(0, Status.BASELINE, 2.0)
    first = agent.propose(workspace(project), brief(1))
    moved = changed(first.description)
    other = next(k for k in ("WARMUP", "DEPTH") if k not in moved)  # the best moved on in a constant it left alone
    best = workspace(project)
    text = (best / "train.py").read_text()
    new_other = {"WARMUP": "-3", "DEPTH": "7"}[other]
    (best / "train.py").write_text(text.replace(find_constants(text.encode())[other].text, new_other, 1)
                                   if other == "DEPTH" else text.replace("WARMUP = -2", "WARMUP = -3"))
    again = agent.propose(best, brief(1))
    assert changed(again.description) == moved  # the same move, now on the new best
    assert find_constants((best / "train.py").read_bytes())[other].text == new_other
    trials = study(project).trials
    assert trials[-1].state == optuna.trial.TrialState.RUNNING and trials[-1].params[other] == ast.literal_eval(
        new_other)  # TPE learns the point that runs
    assert [t.state.name for t in trials if t.user_attrs.get("nightlab_trial") == 1] == ["FAIL", "RUNNING"]


def test_knobs_zero_samples_anywhere_in_the_space(project: Path) -> None:
    cfg = config(project)
    cfg.agent.knobs = 0
    agent = OptunaAgent(cfg, project / "state")
    agent.observe(0, Status.BASELINE, 2.0)
    proposal = agent.propose(workspace(project), brief(1))
    assert set(proposal.params) == SEARCHED and len(changed(proposal.description)) >= 4
    assert "nightlab_moved" not in told(project)[-1].user_attrs


def test_values_enqueued_but_never_asked_for_are_failed_on_load(project: Path) -> None:
    agent = OptunaAgent(config(project, knobs=3), project / "state")
    agent.observe(0, Status.BASELINE, 2.0)
    study(project).enqueue_trial({"DEPTH": 9})  # as a kill between enqueueing a move and asking for it leaves it
    resumed = OptunaAgent(config(project, knobs=3), project / "state")
    resumed.propose(workspace(project), brief(1))
    waiting = [t for t in study(project).trials if t.state == optuna.trial.TrialState.WAITING]
    assert waiting == [] and study(project).trials[1].state == optuna.trial.TrialState.FAIL
