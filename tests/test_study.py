"""`nightlab study`: arms of config overrides, sessions under one compute budget, each best verified on fresh
seeds, a per-arm summary with intervals; resumable. The end-to-end test runs the real CLI on a tiny project."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from nlkit import CLI, TRAIN, idea, make_project, sub
from prockit import wait_for

from nightlab.config import Config
from nightlab.errors import UsageError
from nightlab.report.study import interval, summarize, verdict
from nightlab.study import Arm, Outcome, arm_config, curve, parse_arm
from nightlab.study_pool import gpu_lanes


def test_an_arm_is_a_name_and_config_overrides() -> None:
    assert parse_arm("default") == Arm("default", {})
    arm = parse_arm('local+frontier: search.policy="frontier", agent.knobs=2, search.screen_budget_s=0.5')
    assert arm == Arm("local+frontier", {"search.policy": "frontier", "agent.knobs": 2,
                                         "search.screen_budget_s": 0.5})
    assert parse_arm("x: search.policy=frontier").overrides == {"search.policy": "frontier"}  # a bare word
    for bad in ("no spaces allowed: agent.knobs=1", "a: knobs=1", "a: agent.knobs"):
        with pytest.raises(UsageError, match="--arm"):
            parse_arm(bad)


def test_an_arms_config_is_checked_and_seeded_per_session() -> None:
    cfg = Config()
    cfg.agent.seed = 10
    out = arm_config(cfg, parse_arm("a: agent.knobs=1"), 3)
    assert (out.agent.knobs, out.agent.seed, cfg.agent.knobs, cfg.agent.seed) == (1, 13, 0, 10)
    with pytest.raises(UsageError, match="unknown config key agent.nope"):
        arm_config(cfg, parse_arm("a: agent.nope=1"), 0)
    with pytest.raises(UsageError, match="screen_budget_s"):
        arm_config(cfg, parse_arm(f"a: search.screen_budget_s={cfg.run.budget_s:g}"), 0)
    with pytest.raises(UsageError, match="--arm a"):
        arm_config(cfg, parse_arm('a: search.policy="sideways"'), 0)


def outcome(arm: str, r: int, gain: float, compute_s: float = 3600.0) -> Outcome:
    return Outcome(arm, r, f"t{r}", gain, compute_s, 10, 1, "done")


def test_intervals_and_the_verdict() -> None:
    i = interval([1.0, 2.0, 3.0])
    assert i.mean == 2.0 and i.low == pytest.approx(2 - 2.919986 / 3 ** 0.5, rel=1e-4)  # t(0.95, 2) = 2.92
    outs = [outcome("ref", r, g) for r, g in enumerate([0.1, 0.12, 0.11])] + \
           [outcome("new", r, g, 1800.0) for r, g in enumerate([0.2, 0.21, 0.22])]  # same gain in half the compute
    s = summarize(["ref", "new"], outs)
    assert s[1].per_hour.mean == pytest.approx(0.42) and s[0].per_hour.mean == pytest.approx(0.11)
    assert "new, 3.82× ref" in verdict(s) and verdict(s).endswith("do not overlap")
    close = summarize(["ref", "new"], outs[:3] + [outcome("new", r, g) for r, g in enumerate([0.0, 0.3, 0.1])])
    assert "not enough evidence" in verdict(close) and "overlap" in verdict(close)


def test_the_curve_follows_the_best_against_compute() -> None:
    from nightlab.ledger import TrialRecord
    trials = [TrialRecord(0, "baseline", metric=1.0, seconds=5), TrialRecord(1, "discard", metric=1.1, seconds=1),
              TrialRecord(2, "keep", metric=0.8, seconds=2)]
    assert curve(trials, "minimize") == [[5, 0.0], [6, 0.0], [8, pytest.approx(0.2)]]


def test_a_study_runs_verifies_and_resumes(tmp_path) -> None:
    proj = make_project(tmp_path, config={"keep": {"noise_runs": 2}}, ideas=[
        idea("a clear win", sub("BONUS = 0.0", "BONUS = 0.3")),
        idea("a worse one", sub("LR = 0.1", "LR = 0.0")),
    ])
    args = ("study", "--arm", "greedy", "--arm", 'frontier: search.policy="frontier"', "--sessions", "2",
            "--compute", "1000", "--max-trials", "2", "--seeds", "2", "--name", "s")
    out = proj.nl(*args, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    state = proj.dir / ".nightlab" / "study-s"
    study = json.loads((state / "study.json").read_text())
    assert [(o["arm"], o["r"]) for o in study["outcomes"]] == [("greedy", 0), ("frontier", 0), ("greedy", 1),
                                                               ("frontier", 1)]
    for o in study["outcomes"]:
        assert o["gain"] == pytest.approx(0.3) and o["kept"] == 1 and o["trials"] == 2  # verified on fresh seeds
        assert o["compute_s"] > 0 and o["curve"][-1][1] == pytest.approx(0.3)
        assert proj.rows("SELECT COUNT(*) AS n FROM verify WHERE kind = 'val'", o["tag"])[0]["n"] == 1
    assert "study-s-frontier-1" in {o["tag"] for o in study["outcomes"]}
    assert "not enough evidence" in " ".join(out.stdout.split())
    assert '<svg id="curves"' in (state / "study.html").read_text()

    again = proj.nl(*args, timeout=300)  # resumed: everything is done, nothing runs again
    assert again.returncode == 0 and "(tag study-s-" not in again.stdout
    assert json.loads((state / "study.json").read_text())["outcomes"] == study["outcomes"]
    changed = proj.nl(*[a.replace("1000", "999") for a in args], timeout=60)
    assert changed.returncode == 2 and "other settings" in changed.stderr


# TRAIN that reports the split it is asked for; on the selection split the bonus is worth half as much.
SPLIT_TRAIN = TRAIN.replace('print("step 1/1: done")', '''split = os.environ.get("NIGHTLAB_SPLIT", "val")
if split == "select":
    loss += BONUS / 2
print("step 1/1: done")''').replace('print(f"val_loss: {loss:.6f}")', 'print(f"{split}_loss: {loss:.6f}")')


def test_a_study_verifies_on_the_selection_split_too(tmp_path) -> None:
    proj = make_project(tmp_path, train=SPLIT_TRAIN, config={"keep": {"noise_runs": 2},
                                                              "data": {"select": ["data/select.txt"]}},
                        ideas=[idea("a clear win", sub("BONUS = 0.0", "BONUS = 0.3"))])
    proj.write("data/select.txt", "held out\n")  # git-ignored, like real data
    args = ("study", "--arm", "greedy", "--sessions", "1", "--compute", "1000", "--max-trials", "1", "--seeds", "2",
            "--name", "sel")
    out = proj.nl(*args, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    state = proj.dir / ".nightlab" / "study-sel"
    [o] = json.loads((state / "study.json").read_text())["outcomes"]
    assert o["gain"] == pytest.approx(0.3) and o["select_gain"] == pytest.approx(0.15)  # half the win holds there
    [row] = proj.rows("SELECT * FROM verify WHERE kind = 'select-pair'", o["tag"])
    assert json.loads(row["reference_runs"]) == [pytest.approx(1.04)] * 2  # the baseline on the selection split
    text = " ".join(out.stdout.split())
    assert "on the selection split" in text and "0.15" in text
    assert "<th>on the selection split</th>" in (state / "study.html").read_text()

    again = proj.nl(*args, timeout=120)  # resumed from study.json: nothing runs, the same table
    assert again.returncode == 0 and "(tag " not in again.stdout and "0.15" in again.stdout


def test_parallel_lanes_get_gpus_of_their_own() -> None:
    cfg = Config()
    cfg.sandbox.gpus, cfg.executor.slots, cfg.executor.gpus_per_trial = "0,1,2,3", 2, 1
    assert gpu_lanes(cfg, [cfg], 2) == ["0,1", "2,3"]
    with pytest.raises(UsageError, match="--parallel 3: 3 sessions × 2 GPUs each"):
        gpu_lanes(cfg, [cfg], 3)
    cfg.executor.gpus_per_trial = 0  # the runs take no GPUs of their own: nothing to split
    assert gpu_lanes(cfg, [cfg], 3) == [None, None, None]


# TRAIN whose runs wait until a run of the other session has started too (so two sessions finish only if they run
# at the same time), and whose runs in session 1 also wait while HOLD exists.
def gated_train(gate: str, hold: str) -> str:
    return TRAIN.replace('print("step 1/1: done")', f'''import pathlib, time
parts = pathlib.Path(os.environ["NIGHTLAB_RUN_DIR"]).parts
tag = parts[parts.index(".nightlab") + 1]
gate = pathlib.Path({gate!r})
(gate / tag).touch()
started = time.monotonic()
while len(list(gate.iterdir())) < 2 and time.monotonic() - started < 120:  # the cap only stops a hang
    time.sleep(0.05)
if len(list(gate.iterdir())) < 2:
    raise SystemExit("alone: no run of the other session started meanwhile")
while tag.endswith("-1") and os.path.exists({hold!r}) and time.monotonic() - started < 300:
    time.sleep(0.05)
print("step 1/1: done")''')


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_sessions_run_in_parallel_and_a_stopped_study_resumes(tmp_path, stop: signal.Signals) -> None:
    gate, hold = tmp_path / "gate", tmp_path / "hold"
    gate.mkdir()
    hold.touch()
    proj = make_project(tmp_path, train=gated_train(str(gate), str(hold)),
                        config={"keep": {"noise_runs": 2}, "run": {"timeout_s": 600}},
                        ideas=[idea("a clear win", sub("BONUS = 0.0", "BONUS = 0.3"))])
    args = ("study", "--arm", "a", "--sessions", "2", "--compute", "1000", "--max-trials", "1", "--seeds", "2",
            "--name", "p", "--parallel", "2")
    study_json = proj.dir / ".nightlab" / "study-p" / "study.json"
    first = subprocess.Popen([*CLI, *args], cwd=proj.dir, env=proj.env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        # session 0 can only finish if a run of session 1 started beside it; session 1 waits for HOLD
        wait_for(lambda: first.poll() is not None or study_json.is_file() and json.loads(study_json.read_text())[
            "outcomes"], timeout=240, what="session 0's outcome")
        assert first.poll() is None, first.communicate()[0]
        # stops the study and its session 1, mid-baseline (killed outright, the study's sessions get SIGTERM from
        # the kernel); the output ends once every process of the study is gone
        first.send_signal(stop)
        output = first.communicate(timeout=120)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == (130 if stop == signal.SIGTERM else -signal.SIGKILL), output
    [done] = json.loads(study_json.read_text())["outcomes"]
    assert (done["r"], done["gain"]) == (0, pytest.approx(0.3)) and "(tag study-p-a-1)" in output

    hold.unlink()
    again = proj.nl(*args, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "(tag study-p-a-0)" not in again.stdout and "(tag study-p-a-1)" in again.stdout
    outcomes = json.loads(study_json.read_text())["outcomes"]
    assert outcomes[0] == done and [(o["r"], o["gain"]) for o in outcomes] == [(0, done["gain"]),
                                                                                 (1, pytest.approx(0.3))]
    assert proj.rows("SELECT COUNT(*) AS n FROM verify WHERE kind = 'val'", "study-p-a-0")[0]["n"] == 1
