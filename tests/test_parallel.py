"""Parallel trials on local slots, and pipelining on one slot: real CLI, real git, real ledger.

The training script (nlkit.PARALLEL_TRAIN) keeps its knobs on lines far apart, so git can re-apply one
change on top of another (rebase) unless both touch the same knob (a conflict: the trial is discarded
as stale).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from nlkit import (CLI, PARALLEL_TRAIN, Project, check_consistent, content, idea, one_line_error, parallel_project, sub,
                   until)
from prockit import Watch

KEPT = "SELECT 1 FROM trials WHERE n = {} AND status = 'keep'"
PROPOSED = "SELECT 1 FROM trials WHERE n = {} AND commit_sha IS NOT NULL"  # (a bare sha is false when it starts a-f)


def test_two_slots_run_trials_at_once_and_keep_git_and_ledger_consistent(tmp_path: Path) -> None:
    ideas = [idea(f"lr {v}", sub("LR = 0.1", f"LR = {v}")) for v in (0.2, 0.15, 0.12, 0.25, 0.35, 0.05)]
    ideas[0]["edit"].append(until(tmp_path, "SELECT 1 FROM runs WHERE trial = 2"))  # trial 1 runs till 2 starts
    proj = parallel_project(tmp_path, *ideas)
    proj.run("--max-trials", "6", "--slots", "2", timeout=120)
    rows = check_consistent(proj)
    # every trial that ran says where (one proposed before a keep may end stale without running, by timing)
    assert len(rows) == 7 and {r["hardware"] for r in rows if r["runs"]} == {"cpu"}
    done = [r for r in proj.runs() if r["trial"] > 0]
    assert {r["slot"] for r in done} == {0, 1}
    overlapped = any(a["started"] < b["finished"] and b["started"] < a["finished"]
                     for a in done for b in done if a["slot"] != b["slot"])
    assert overlapped, "two slots never ran at the same time"
    slots = proj.status_json()["slots"]
    assert [s["slot"] for s in slots] == [0, 1] and all(s["trial"] is None and s["runs"] >= 1 for s in slots)
    assert sum(s["runs"] for s in slots) == len(proj.runs())
    assert "<h2>Slots</h2>" in (proj.state() / "report.html").read_text()
    assert "slots" in proj.nl("status", "--tag", "t").stdout


def test_a_winner_whose_parent_moved_is_rebased_and_a_conflicting_one_is_discarded(tmp_path: Path) -> None:
    proj = parallel_project(
        tmp_path,
        idea("lr 0.3", sub("LR = 0.1", "LR = 0.3")),  # quick: kept first
        idea("bonus, ends after 1", sub("BONUS = 0.0", "BONUS = 0.1"), until(tmp_path, KEPT.format(1))),
        # ends after 2: it beats the best when it ends, but conflicts with trial 2 on the lines both changed
        idea("big bonus, ends after 2", sub("BONUS = 0.0", "BONUS = 0.5"), until(tmp_path, KEPT.format(2))),
    )
    proj.run("--max-trials", "3", "--slots", "3", timeout=120)
    rows = check_consistent(proj)
    assert [r["status"] for r in rows] == ["baseline", "keep", "keep", "discard"]
    assert rows[2]["reason"] == "rebased onto trial 1" and rows[2]["parent"] == rows[1]["commit_sha"]
    assert rows[2]["metric"] == pytest.approx(0.9)  # both changes, measured together after the rebase
    assert rows[3]["reason"].startswith("stale: its change no longer applies")
    best = proj.git("show", "nightlab/t:train.py")
    assert "LR = 0.3" in best and "BONUS = 0.1" in best
    assert "status: keep (rebased onto trial 1)" in proj.git("log", "-1", "--format=%B", "nightlab/t")


def test_pipelining_proposes_the_next_trial_while_one_trains_and_rebases_it_after_a_keep(tmp_path: Path) -> None:
    proj = parallel_project(
        tmp_path,
        # trial 1 trains until the agent has proposed trial 2
        idea("lr 0.3", sub("LR = 0.1", "LR = 0.3"), until(tmp_path, PROPOSED.format(2))),
        idea("bonus", sub("BONUS = 0.0", "BONUS = 0.1")),
        idea("bonus again", sub("BONUS = 0.0", "BONUS = 0.2")),
    )
    proj.run("--max-trials", "3", "--slots", "1", "--pipeline", timeout=120)
    rows = check_consistent(proj)
    assert rows[2]["started"] < rows[1]["finished"]  # the agent worked while trial 1 trained
    assert [r["status"] for r in rows] == ["baseline", "keep", "keep", "discard"]
    assert rows[2]["reason"] == "rebased onto trial 1"
    assert rows[3]["reason"].startswith("stale")  # written on trial 1, but trial 2 changed the same line
    assert len([r for r in proj.runs() if r["trial"] == 2]) == 1  # rebased before it ran: one run, not two
    assert {r["slot"] for r in proj.runs()} == {0}


def test_each_slot_gets_its_own_gpus(tmp_path: Path) -> None:
    config = {"sandbox": {"backend": "process", "gpus": "0,1,2,3"}, "executor": {"gpus_per_trial": 2}}
    ideas = [idea(f"lr {v}", sub("LR = 0.1", f"LR = {v}")) for v in (0.2, 0.15, 0.12)]
    proj = parallel_project(tmp_path, *ideas, config=config)
    proj.run("--max-trials", "3", "--slots", "2", timeout=120)
    check_consistent(proj)
    for run in proj.runs():
        k = run["k"]
        log = proj.state() / "runs" / str(run["trial"]) / (f"repeat-{k}" if k else "") / "run.log"
        assert f"gpus: {['0,1', '2,3'][run['slot']]}" in log.read_text()

    proc = proj.run("--slots", "3", ok=False)
    assert proc.returncode == 2
    assert "3 slots × gpus_per_trial 2 needs 6 GPUs, but 4 are available" in one_line_error(proc)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_stopped_with_two_trials_in_flight_both_runs_die_and_resume_counts_each_once(tmp_path: Path, sig) -> None:
    hold = tmp_path / "hold"
    train = PARALLEL_TRAIN.replace('HOLD = ""', f'HOLD = "{hold}"')
    ideas = [idea(f"lr {v}", sub("LR = 0.1", f"LR = {v}")) for v in (0.2, 0.15, 0.12)]
    proj = parallel_project(tmp_path, *ideas, train=train)
    proj.run("--max-trials", "0", timeout=60)  # the baseline, before the runs start to wait
    hold.touch()
    proc = subprocess.Popen([*CLI, "run", "--tag", "t", "--max-trials", "3", "--slots", "2"], cwd=proj.dir,
                            env=proj.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while len([r for r in _safe_runs(proj) if r["status"] == "running"]) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    pids = [int((proj.state() / "runs" / str(n) / "pid").read_text()) for n in (1, 2) if _wait_file(proj, n)]
    with Watch(pids) as runs:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        if sig == signal.SIGINT:
            assert proc.returncode == 130, err
            assert "interrupted: the ledger is consistent" in err
        else:
            assert proc.returncode == -signal.SIGKILL
        assert runs.survivors(timeout=30) == []  # after SIGKILL, PR_SET_PDEATHSIG ends them as the threads exit
    assert [r["status"] for r in proj.ledger()][1:] == ["running", "running"]
    hold.unlink()
    proj.run("--max-trials", "3", "--slots", "2", timeout=120)
    rows = check_consistent(proj)
    assert [r["n"] for r in rows] == [0, 1, 2, 3]
    assert {r["status"] for r in proj.runs() if r["trial"] in (1, 2)} >= {"interrupted", "ok"}


def _safe_runs(proj: Project) -> list[dict]:
    try:
        return proj.runs()
    except Exception:  # the ledger may not exist yet
        return []


def _wait_file(proj: Project, n: int) -> bool:
    path = proj.state() / "runs" / str(n) / "pid"
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()



def test_notes_in_the_scratchpad_never_keep_a_winner_from_being_rebased(tmp_path: Path) -> None:
    def note(text: str) -> dict:
        return content(f"# notes\n{text}\n", "scratchpad.md")

    proj = parallel_project(
        tmp_path,
        idea("lr 0.3", sub("LR = 0.1", "LR = 0.3"), until(tmp_path, PROPOSED.format(2)),
             note("LR 0.3: the optimum?")),
        idea("bonus", sub("BONUS = 0.0", "BONUS = 0.1"), note("a bonus helps")),
    )
    proj.run("--max-trials", "2", "--pipeline", timeout=120)
    rows = check_consistent(proj)
    assert [r["status"] for r in rows] == ["baseline", "keep", "keep"]
    assert rows[2]["reason"] == "rebased onto trial 1"  # before: stale, both trials rewrote the scratchpad
    notes = proj.git("show", "nightlab/t:scratchpad.md")
    assert "LR 0.3: the optimum?" in notes and "a bonus helps" in notes


def test_optuna_in_parallel_writes_its_point_again_on_the_new_best_instead_of_going_stale(tmp_path: Path) -> None:
    # Every optuna proposal rewrites the same constant lines, so a cherry-picked change would always conflict.
    search = {"LR": {"low": 0.05, "high": 0.5}, "BONUS": {"low": 0.0, "high": 0.2}, "SLEEP": {"choices": [0.4]}}
    proj = parallel_project(tmp_path, config={"agent": {"name": "optuna", "search": search}})
    proj.run("--max-trials", "6", "--slots", "2", "--pipeline", timeout=180)
    rows = check_consistent(proj)
    assert not [r for r in rows if r["reason"].startswith("stale")]
    rebased = [r for r in rows if r["reason"].startswith("rebased onto trial")]
    assert rebased, [(r["n"], r["status"], r["reason"]) for r in rows]
    for r in rebased:
        m = int(r["reason"].rsplit(" ", 1)[1])
        assert r["parent"] == rows[m]["commit_sha"]
        point = dict(line.strip().split(" = ") for line in (proj.state() / "runs" / str(r["n"]) / "agent.log")
                     .read_text().splitlines()[1:] if " = " in line)
        source = proj.git("show", f"{r['commit_sha']}:train.py")
        for name in ("LR", "BONUS"):  # the trial's own point, written onto the new best
            assert f"{name} = {point[name]}\n" in source, (name, point, source)
