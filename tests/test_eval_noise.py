"""Evaluation noise end to end: a deterministic train.py (its seed hard-coded) through the real loop.

Re-running such code gives the same number every time, so seed noise cannot say whether a win is real;
which examples are in the 400-example validation split can. A stream of 20 proposals that only change
the hard-coded seed, then one real change (more of the informative features), is run twice: with
per-example values (the paired keep rule) and without them (the plain gate the old rule amounted to).
"""

from __future__ import annotations

import pytest

from nlkit import content, idea, make_project

# A logistic regression trained by SGD on fixed synthetic data (stdlib only, ~0.1 s). Its only randomness is
# SEED (initial weights, shuffling). It reports 0/1 errors per validation example when REPORT_EXAMPLES is on.
LEARNER = '''"""A deterministic learner: the seed is hard-coded, as in most train.py files."""
import json, math, os, random

SEED = 200
FEATURES = 2
REPORT_EXAMPLES = True

def data(n, rng):
    out = []
    for _ in range(n):
        y = rng.random() < 0.5
        x = [rng.gauss(0.6 if y else -0.6, 1.5) * (1.0 if j < 6 else 0.0) + rng.gauss(0, 1.0) for j in range(8)]
        out.append((x, 1 if y else 0))
    return out

gen = random.Random(12345)  # the data never changes
train, val = data(1500, gen), data(400, gen)
rng = random.Random(SEED)
w, b = [rng.gauss(0, 0.1) for _ in range(FEATURES)], 0.0
for _ in range(3):
    rng.shuffle(train)
    for x, y in train:
        z = b + sum(wi * xi for wi, xi in zip(w, x))
        g = 1 / (1 + math.exp(-max(-30.0, min(30.0, z)))) - y
        b -= 0.05 * g
        w = [wi - 0.05 * g * xi for wi, xi in zip(w, x)]
errors = [float((b + sum(wi * xi for wi, xi in zip(w, x)) > 0) != (y == 1)) for x, y in val]
err = sum(errors) / len(errors)
print(f"val_err: {err:.6f}")
if REPORT_EXAMPLES:
    with open(os.path.join(os.environ["NIGHTLAB_RUN_DIR"], "metrics.json"), "w") as f:
        json.dump({"val_err": err, "per_example": {"val_err": errors}}, f)
'''
SEEDS = range(201, 221)


def _stream(report: bool) -> tuple[str, list[dict]]:
    def train(seed: int = 200, features: int = 2) -> str:
        text = LEARNER.replace("SEED = 200", f"SEED = {seed}").replace("FEATURES = 2", f"FEATURES = {features}")
        return text if report else text.replace("REPORT_EXAMPLES = True", "REPORT_EXAMPLES = False")

    ideas = [idea(f"seed {s}", content(train(seed=s))) for s in SEEDS]
    ideas.append(idea("use all six informative features", content(train(features=6))))
    return train(), ideas


def _session(tmp_path, report: bool) -> tuple[list[dict], dict, str, str]:
    text, ideas = _stream(report)
    config = {"metric": {"name": "val_err", "goal": "minimize", "constraints": []},
              "keep": {"noise_runs": 5, "confirm": 2}, "run": {"timeout_s": 120}}
    proj = make_project(tmp_path / ("paired" if report else "plain"), train=text, config=config, ideas=ideas)
    first = proj.run("--max-trials", "10", timeout=600)  # then resumed: the rest is judged from the ledger's values
    proc = proj.run("--max-trials", str(len(ideas)), timeout=600)
    proc.stdout, proc.stderr = first.stdout + proc.stdout, first.stderr + proc.stderr
    brief = (proj.state() / "runs" / "1" / "brief.md").read_text()
    return proj.log_json(), proj.status_json(), proc.stdout + proc.stderr, brief


@pytest.mark.slow
def test_a_deterministic_train_py_keeps_a_real_change_but_not_its_own_seed(tmp_path) -> None:
    log, status, out, brief = _session(tmp_path, report=True)
    base, seeds, real = log[0], log[1:21], log[21]
    assert base["status"] == "baseline" and len(base["runs"]) == 2  # identical twice: the other 3 were not run
    assert status["deterministic"] is True and status["examples"] == 400 and status["noise"] == 0.0
    assert "paired per-example comparison" in status["keep_rule"]
    kept = [t["description"] for t in seeds if t["status"] == "keep"]
    assert len(kept) <= 1, kept
    assert all(len(t["runs"]) == 1 for t in log[1:])  # no confirmation run spent on code that cannot change
    assert real["status"] == "keep", real
    assert "no noise measured" not in out
    assert "run-to-run noise: none: the code gives the same number every run" in brief  # the agent is told
    assert "evaluation noise" in brief


@pytest.mark.slow
def test_without_per_example_values_the_same_stream_meets_a_plain_gate_and_says_so(tmp_path) -> None:
    log, status, out, brief = _session(tmp_path, report=False)
    assert status["deterministic"] is True and status["examples"] is None
    assert "plain 'better than the best' gate" in status["keep_rule"]
    assert "warning: no noise measured" in " ".join(out.split())  # said at the start of the run, not only later
    kept = [t["description"] for t in log[1:21] if t["status"] == "keep"]
    assert len(kept) >= 2, kept  # what the paired rule is there to prevent: seed changes kept as wins
    assert "deterministic" in log[0]["reason"]  # the baseline's record says why there is no noise
    assert "the code gives the same number every run" in brief


def test_trial_shows_the_per_example_values_and_a_candidate_that_breaks_the_pairing_is_invalid(tmp_path) -> None:
    text, _ = _stream(report=True)
    fewer = text.replace("for x, y in val]", "for x, y in val[:-1]]")
    silent = text.replace("REPORT_EXAMPLES = True", "REPORT_EXAMPLES = False")
    inconsistent = text.replace('"per_example": {"val_err": errors}', '"per_example": {"val_err": errors[::-1][:200] * 2}')
    config = {"metric": {"name": "val_err", "goal": "minimize", "constraints": []}, "keep": {"noise_runs": 2}}
    proj = make_project(tmp_path, train=text, config=config, ideas=[
        idea("evaluate on one example fewer", content(fewer)),
        idea("stop reporting per-example values", content(silent)),
        idea("report values that do not match the metric", content(inconsistent))])
    trial = proj.nl("trial")
    assert trial.returncode == 0, trial.stderr
    assert "per-example values: 400, their mean matches" in " ".join(trial.stdout.split())
    proj.run("--max-trials", "3")
    log = proj.log_json()
    assert [t["status"] for t in log] == ["baseline", "invalid", "invalid", "invalid"]
    assert "399 given, the baseline reported 400" in log[1]["reason"]
    assert "per-example values missing (the baseline reported 400)" in log[2]["reason"]
    assert "differs from the reported val_err" in log[3]["reason"]
