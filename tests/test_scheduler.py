"""The loop built in-process, as `nightlab run` builds it, over a fake executor (tests/fakes.py).

Real git repositories, the real ledger, the real scripted agent (or the Knobs agent of tests/schedkit.py when
trials are proposed in threads); only training is fake. Nothing waits for a time: the fake executor answers one run
at a time, and holds runs the test names until its notify callback releases them, so every multi-slot
interleaving below is the only one possible. With more than one slot the loop asks the agent in threads;
the Knobs agent then waits, where a test needs it, for a run to be submitted before it proposes, so the
order of proposals is fixed too. Constants of the loop pinned here: a lost run is run once
more (LOST_RETRIES = 1), a winner is rebased at most twice (MAX_REBASES = 2).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fakes import FakeExecutor, lost, ok, parse
from nightlab import config
from nightlab.agents.scripted import ScriptedAgent
from nightlab.errors import RunCrashed
from nightlab.ledger import Ledger
from nightlab.types import Brief, Event, Proposal
from nlkit import content, idea, sub
from schedkit import TAG, Knobs, check_git, loss, make_lab, noisy, race, ran, stopped_with_two_trials_running

pytestmark = pytest.mark.timeout(120)  # a held run nobody releases would wait forever: fail instead


@pytest.fixture(autouse=True)
def _no_identity(no_git_identity: Path) -> None:
    """The loop's own git commits run in this process: as in nlkit's CLI runs, git knows no user."""


# -- one slot: the sequential loop ----------------------------------------------------------------------
def test_one_slot_keeps_and_discards_by_the_metric_and_the_branch_follows_the_best(tmp_path: Path) -> None:
    ideas = [idea("A up", sub("A = 0.0", "A = 0.1")), idea("B down", sub("B = 0.0", "B = -0.05")),
             idea("C up", sub("C = 0.0", "C = 0.05"))]
    lab = make_lab(tmp_path, loss, ideas=ideas)
    assert lab.run(max_trials=3) == "reached --max-trials 3"
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "keep", [0.9]), (2, "discard", [0.95]), (3, "keep", [0.85])]
    assert [r["delta"] for r in rows] == [None, pytest.approx(-0.1), pytest.approx(0.05), pytest.approx(-0.05)]
    assert rows[2]["parent"] == rows[3]["parent"] == rows[1]["commit_sha"]  # a discard leaves the best where it was
    assert "B = -0.05" in lab.git("show", f"{rows[2]['commit_sha']}:train.py")  # the reverted idea keeps its diff
    assert "B = 0.0" in lab.git("show", f"nightlab/{TAG}:train.py")
    # one job per run, all on slot 0, each of the very change the trial recorded (in its commit, amended later)
    assert lab.fake.ids() == ["0.0a0s1", "1.0a0s1", "2.0a0s1", "3.0a0s1"]
    assert {s.job.slot for s in lab.fake.submitted} == {0}
    assert [ran(s) for s in lab.fake.submitted] == [lab.git("show", f"{r['commit_sha']}:train.py") for r in rows]
    assert [lab.runs(n)[0][4:] for n in range(4)] == [("ok", 1.0), ("ok", 0.9), ("ok", 0.95), ("ok", 0.85)]
    tsv = (lab.proj.state(TAG) / "results.tsv").read_text().splitlines()
    assert [line.split("\t")[3] for line in tsv] == ["status", "baseline", "keep", "discard", "keep"]
    assert [e for e in lab.events if e[1] == 1] == [(Event.PROPOSE, 1), (Event.RUN, 1), (Event.DONE, 1)]


@pytest.mark.parametrize("slots", [1, 2])
def test_the_baseline_stops_after_two_identical_runs(tmp_path: Path, slots: int) -> None:
    lab = make_lab(tmp_path, loss, slots=slots, config={"keep": {"noise_runs": 5}})
    assert lab.run(max_trials=0) == "reached --max-trials 0"
    assert lab.table() == [(0, "baseline", [1.0, 1.0])]
    assert [(s.job.id, s.job.slot) for s in lab.fake.submitted] == [("0.0a0s1", 0), ("0.1a0s1", slots - 1)]
    meta = Ledger(lab.proj.state(TAG) / "ledger.sqlite")
    assert (meta.get("deterministic"), meta.get("noise")) == (True, 0.0)
    meta.close()


def test_a_noisy_baseline_runs_every_noise_run_two_slots_at_a_time(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, noisy, slots=2, config={"keep": {"noise_runs": 4}})
    lab.run(max_trials=0)
    assert lab.table() == [(0, "baseline", [1.02, 0.98, 1.0, 1.0])]
    assert [(s.job.id, s.job.slot) for s in lab.fake.submitted] == [
        ("0.0a0s1", 0), ("0.1a0s1", 1), ("0.2a0s1", 0), ("0.3a0s1", 1)]
    assert lab.trials()[0]["metric"] == pytest.approx(1.0)


# -- lost runs --------------------------------------------------------------------------------------------
def test_a_run_lost_once_is_run_again_and_the_trial_judged_normally(tmp_path: Path) -> None:
    def answer(job):
        return lost(job) if job.id in ("0.0a0s1", "1.0a0s1") else loss(job)

    lab = make_lab(tmp_path, answer, ideas=[idea("A up", sub("A = 0.0", "A = 0.1"))])
    lab.run(max_trials=1)
    check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "keep", [0.9])]
    assert lab.fake.ids() == ["0.0a0s1", "0.0a1s1", "1.0a0s1", "1.0a1s1"]
    assert lab.runs(1) == [("1.0a0s1", 0, 0, 0, "lost", None), ("1.0a1s1", 0, 1, 0, "ok", 0.9)]
    assert (Event.LOST, 1) in lab.events and (Event.LOST, 0) in lab.events
    # the retry starts from a clean run directory that still holds the proposal
    assert sorted(p.name for p in lab.run_dir(1).iterdir()) == ["agent.log", "brief.md", "diff.patch",
                                                                 "fake-1.0a1s1.log"]


def test_a_run_lost_twice_loses_the_trial_without_charging_the_agent(tmp_path: Path) -> None:
    def answer(job):
        return lost(job) if parse(job.id)[0] == 1 else loss(job)

    ideas = [idea("A up", sub("A = 0.0", "A = 0.1")), idea("B up", sub("B = 0.0", "B = 0.2"))]
    lab = make_lab(tmp_path, answer, ideas=ideas, config={"agent": {"max_failures": 1}})
    assert lab.run(max_trials=2) == "reached --max-trials 2"  # not "the agent failed 1 times"
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "lost", []), (2, "keep", [0.8])]
    assert rows[1]["reason"] == "lost 2 times (the worker died)"
    assert lab.fake.ids(1) == ["1.0a0s1", "1.0a1s1"]
    assert rows[2]["parent"] == rows[0]["commit_sha"]


def test_a_baseline_lost_twice_stops_the_run_and_leaves_no_baseline(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, lost)
    with pytest.raises(RunCrashed, match=r"^the baseline failed \(lost: the worker died\); fix it"):
        lab.run(max_trials=1)
    assert lab.table() == [] and lab.fake.ids() == ["0.0a0s1", "0.0a1s1"]


# -- confirmation runs ----------------------------------------------------------------------------------
def test_an_uncertain_gain_gets_one_more_run_before_it_is_kept_or_discarded(tmp_path: Path) -> None:
    # Baseline 1.02 and 0.98: noise 0.028. Against it, one run's gain needs 0.069 to count and anything
    # between 0.035 and 0.139 is re-run; over two runs 0.057 is enough (decide.py, sigmas 2).
    values = {"0.0": 1.02, "0.1": 0.98, "1.0": 0.92, "1.1": 0.88, "2.0": 0.85, "2.1": 0.93, "3.0": 0.70}

    def answer(job):
        n, k, _, _ = parse(job.id)
        return ok(job, values[f"{n}.{k}"])

    ideas = [idea(f"{knob} up", sub(f"{knob} = 0.0", f"{knob} = 0.1")) for knob in "ABC"]
    lab = make_lab(tmp_path, answer, ideas=ideas, config={"keep": {"noise_runs": 2, "confirm": 1}})
    lab.run(max_trials=3)
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.02, 0.98]), (1, "keep", [0.92, 0.88]), (2, "discard", [0.85, 0.93]),
                           (3, "keep", [0.70])]
    assert [r["metric"] for r in rows] == pytest.approx([1.0, 0.90, 0.89, 0.70])  # decided on the mean
    assert lab.fake.ids() == ["0.0a0s1", "0.1a0s1", "1.0a0s1", "1.1a0s1", "2.0a0s1", "2.1a0s1", "3.0a0s1"]
    assert [s.job.spec.seed for s in lab.fake.submitted if parse(s.job.id)[0] == 1] == [1000, 1001]  # fresh seeds
    assert [n for event, n in lab.events if event == Event.CONFIRM] == [1, 2]


# -- several trials at once: rebase -----------------------------------------------------------------------
def test_a_winner_whose_best_moved_on_is_rebased_onto_the_new_best_and_run_from_scratch(tmp_path: Path) -> None:
    lab = race(tmp_path, {1: {"A": 0.1}, 2: {"B": 0.2}})
    rows = check_git(lab)
    # trial 2 measured 0.8 against the baseline; on trial 1's code it measures 0.7, and only that counts
    assert lab.table() == [(0, "baseline", [1.0]), (1, "keep", [0.9]), (2, "keep", [0.7])]
    assert rows[2]["reason"] == "rebased onto trial 1" and rows[2]["delta"] == pytest.approx(-0.2)
    assert lab.fake.ids() == ["0.0a0s1", "1.0a0s1", "2.0a0s1", "2.1a0s1"]
    assert {s.job.slot for s in lab.fake.submitted[1:3]} == {0, 1}  # trials 1 and 2 ran side by side
    assert [r[4:] for r in lab.runs(2)] == [("ok", 0.8), ("ok", 0.7)]
    first, rebased = (ran(s) for s in lab.fake.submitted[2:])
    assert "B = 0.2" in first and "A = 0.0" in first  # on the baseline, as trial 2 was made
    assert rebased == lab.git("show", f"{rows[2]['commit_sha']}:train.py")  # a new commit on trial 1's
    assert rows[2]["parent"] == rows[1]["commit_sha"] == lab.git("rev-parse", f"{rows[2]['commit_sha']}^")
    best = lab.git("show", f"nightlab/{TAG}:train.py")
    assert "A = 0.1" in best and "B = 0.2" in best
    assert "B = 0.2" in (lab.run_dir(2) / "diff.patch").read_text()
    assert (Event.REBASE, 2) in lab.events


def test_a_winner_that_no_longer_applies_to_the_new_best_is_discarded_as_stale(tmp_path: Path) -> None:
    lab = race(tmp_path, {1: {"A": 0.1}, 2: {"A": 0.2}})  # both change line A: git cannot re-apply trial 2
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "keep", [0.9]), (2, "discard", [0.8])]
    assert rows[2]["reason"] == "stale: its change no longer applies to the best (trial 1)"
    assert lab.fake.ids(2) == ["2.0a0s1"]  # not run again
    assert "A = 0.1" in lab.git("show", f"nightlab/{TAG}:train.py")


def test_a_stale_trial_keeps_its_own_change_in_its_commit(tmp_path: Path) -> None:
    lab = race(tmp_path, {1: {"A": 0.1}, 2: {"A": 0.2}})
    rows = lab.trials()
    assert "A = 0.2" in lab.git("show", f"{rows[2]['commit_sha']}:train.py")
    assert lab.git("rev-parse", f"{rows[2]['commit_sha']}^") == rows[0]["commit_sha"]


def test_a_winner_is_rebased_at_most_twice_then_discarded_as_stale(tmp_path: Path) -> None:
    # Trial 1 (C) beats every best, but each time its run ends another trial (2, 3, 4: A) was kept first.
    lab = make_lab(tmp_path, loss, slots=2, hold=("1.0", "1.1", "1.2"))
    gates = {n: (lambda k=f"1.{n - 2}": lab.fake.wait_submitted(k)) for n in (2, 3, 4)}
    lab.agent = Knobs({1: {"C": 0.3}, 2: {"A": 0.05}, 3: {"A": 0.1}, 4: {"A": 0.15}}, gates)
    for n in (2, 3, 4):
        lab.hooks[(Event.DONE, n)] = lambda k=f"1.{n - 2}": lab.fake.release(k)
    lab.run(max_trials=4)
    rows = check_git(lab)
    assert [r["status"] for r in rows] == ["baseline", "discard", "keep", "keep", "keep"]
    assert rows[1]["reason"] == "stale: the best moved on while it ran (trial 4)"
    assert lab.fake.ids(1) == ["1.0a0s1", "1.1a0s1", "1.2a0s1"]
    assert [r[5] for r in lab.runs(1)] == pytest.approx([0.7, 0.65, 0.6])  # on the baseline, trial 2, trial 3
    assert [n for event, n in lab.events if event == Event.REBASE] == [1, 1]
    assert rows[1]["parent"] == rows[3]["commit_sha"]


def test_a_winner_stopped_after_two_rebases_is_not_rebased_a_third_time_on_resume(tmp_path: Path) -> None:
    # As above, but the session stops as trial 1 is rebased the second time; on resume the best moves on once more.
    lab = make_lab(tmp_path, loss, slots=2, hold=("1.0", "1.1"))
    lab.agent = Knobs({1: {"C": 0.3}, 2: {"A": 0.05}, 3: {"A": 0.1}, 4: {"A": 0.15}},
                      {n: (lambda k=f"1.{n - 2}": lab.fake.wait_submitted(k)) for n in (2, 3)})
    for n in (2, 3):
        lab.hooks[(Event.DONE, n)] = lambda k=f"1.{n - 2}": lab.fake.release(k)
    rebased: list[int] = []

    def second_rebase_stops() -> None:
        rebased.append(1)
        if len(rebased) == 2:
            raise KeyboardInterrupt

    lab.hooks[(Event.REBASE, 1)] = second_rebase_stops
    with pytest.raises(KeyboardInterrupt):
        lab.run(max_trials=3)
    assert [(r["status"], r["rebases"]) for r in lab.trials()][1:] == [("running", 2), ("keep", 0), ("keep", 0)]
    lab.fake = FakeExecutor(loss, slots=2, hold=("1.0",))  # a resumed trial's runs start again at 0
    lab.agent.gates = {4: lambda: lab.fake.wait_submitted("1.0")}
    lab.hooks = {(Event.DONE, 4): lambda: lab.fake.release("1.0")}
    assert lab.run(max_trials=4) == "reached --max-trials 4"
    rows = check_git(lab)
    assert [r["status"] for r in rows] == ["baseline", "discard", "keep", "keep", "keep"]
    assert rows[1]["reason"] == "stale: the best moved on while it ran (trial 4)" and rows[1]["rebases"] == 2
    assert lab.fake.ids(1) == ["1.0a0s2"]  # run once on trial 3's code, not rebased a third time


# -- stopped and resumed ------------------------------------------------------------------------------------
def test_trials_in_flight_when_stopped_are_run_again_once_on_resume(tmp_path: Path) -> None:
    lab = stopped_with_two_trials_running(tmp_path, loss)
    lab.fake = FakeExecutor(loss)
    assert lab.run(max_trials=3) == "reached --max-trials 3"
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "keep", [0.9]), (2, "keep", [0.7]), (3, "keep", [0.65])]
    assert rows[2]["reason"] == "rebased onto trial 1"  # its parent had moved on while it was stopped
    assert lab.agent.proposed == [1, 2, 3]  # their proposals were kept, not made again
    assert lab.fake.ids() == ["1.0a0s2", "2.0a0s2", "3.0a0s2"]
    for n, value in ((1, 0.9), (2, 0.7)):
        assert [(r[0], r[4], r[5]) for r in lab.runs(n)] == [
            (f"{n}.0a0s1", "interrupted", None), (f"{n}.0a0s2", "ok", pytest.approx(value))]
    for n in (1, 2):  # nothing left from the stopped session's runs
        assert [p.name for p in lab.run_dir(n).glob("fake-*")] == [f"fake-{n}.0a0s2.log"]


def test_a_resumed_trial_keeps_its_proposal_files(tmp_path: Path) -> None:
    lab = stopped_with_two_trials_running(tmp_path, loss)
    lab.fake = FakeExecutor(loss)
    lab.run(max_trials=2)
    for n in (1, 2):
        assert {"brief.md", "agent.log", "diff.patch"} <= {p.name for p in lab.run_dir(n).iterdir()}


@pytest.mark.parametrize("first", ["confirm", "lost"])
def test_runs_a_trial_in_flight_needs_go_before_a_waiting_trial(tmp_path: Path, first: str) -> None:
    # Resumed on one slot with pipelining, trials 1 and 2 are both in flight; trial 1's run needs a
    # confirmation run (or is lost): that run goes before trial 2's first. (Resumed trials enter the queue
    # without a proposal thread; a freshly proposed one gives the loop no event at which to hold trial 1's
    # run until it is queued, so that order could not be fixed.)
    lab = stopped_with_two_trials_running(tmp_path, noisy, config={"keep": {"noise_runs": 2, "confirm": 1}})
    lab.fake = FakeExecutor(lambda job: lost(job) if job.id == "1.0a0s2" and first == "lost" else noisy(job))
    lab.run(max_trials=2, pipeline=True)
    check_git(lab)
    assert lab.table() == [(0, "baseline", [1.02, 0.98]), (1, "keep", [0.92, 0.88]), (2, "keep", [0.72])]
    again = ["1.0a0s2", "1.0a1s2"] if first == "lost" else ["1.0a0s2"]
    assert lab.fake.ids() == [*again, "1.1a0s2", "2.0a0s2"]
    assert {s.job.slot for s in lab.fake.submitted} == {0}


class StopsInItsFirstProposal(ScriptedAgent):
    """The scripted agent, stopped (Ctrl-C) after its first edit and before it returns."""

    stopped = False

    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        proposal = super().propose(workspace, brief)
        if not StopsInItsFirstProposal.stopped:
            StopsInItsFirstProposal.stopped = True
            raise KeyboardInterrupt
        return proposal


def test_a_proposal_cut_short_is_made_again_under_the_same_number(tmp_path: Path) -> None:
    ideas = [idea("A up", sub("A = 0.0", "A = 0.1")), idea("B up", sub("B = 0.0", "B = 0.2"))]
    lab = make_lab(tmp_path, loss, ideas=ideas)
    cfg = config.load(lab.proj.dir / "nightlab.toml")
    lab.agent = StopsInItsFirstProposal(cfg, lab.proj.state(TAG))
    with pytest.raises(KeyboardInterrupt):
        lab.run(max_trials=2)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "running", [])]
    assert "A = 0.1" in (lab.proj.worktree(TAG) / "train.py").read_text()  # the half-made edit
    assert lab.run(max_trials=2) == "reached --max-trials 2"
    rows = check_git(lab)
    assert [(r["n"], r["status"], r["description"]) for r in rows] == [
        (0, "baseline", "baseline"), (1, "keep", "A up"), (2, "keep", "B up")]
    assert lab.fake.ids() == ["0.0a0s1", "1.0a0s2", "2.0a0s2"]


class NotesTurns(ScriptedAgent):
    """The scripted agent, noting as each turn starts which earlier trials' proposals have ended (a proposal
    writes its diff last). Trial 1's turn returns only once trial 2's thread has started, with a long transcript:
    trial 2's turn then had every chance to start while trial 1's proposal was still being recorded."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.ended: dict[int, list[int]] = {}

    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        runs = self.state_path.parent / "runs"
        self.ended[brief.trial] = [n for n in range(1, brief.trial) if (runs / str(n) / "diff.patch").exists()]
        proposal = super().propose(workspace, brief)
        if brief.trial == 1:
            deadline = time.monotonic() + 60  # only keeps a broken loop from hanging the test
            while sum(t.name == "nightlab-agent" for t in threading.enumerate()) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            proposal.transcript += "x" * 2_000_000
        return proposal


def test_an_agent_that_is_not_concurrent_takes_its_turns_in_order_and_its_trials_queue_in_order(tmp_path: Path) -> None:
    # Pipelined, trials 1 and 2 are proposed at once, in threads. Before, a lock kept the agent's turns apart but
    # let trial 2's turn start as trial 1's agent call returned: trial 2 could win the lock (and trial 1's idea),
    # or end first while trial 1 committed, and so run first.
    ideas = [idea("A up", sub("A = 0.0", "A = 0.1")), idea("B up", sub("B = 0.0", "B = 0.2")),
             idea("C up", sub("C = 0.0", "C = 0.05"))]
    lab = make_lab(tmp_path, loss, ideas=ideas)
    lab.agent = agent = NotesTurns(config.load(lab.proj.dir / "nightlab.toml"), lab.proj.state(TAG))
    assert lab.run(max_trials=3, pipeline=True) == "reached --max-trials 3"
    check_git(lab)
    assert agent.ended == {1: [], 2: [1], 3: [1, 2]}  # each turn after the last one's proposal had ended
    assert [(r["n"], r["description"]) for r in lab.trials()][1:] == [(1, "A up"), (2, "B up"), (3, "C up")]
    assert [parse(i)[0] for i in lab.fake.ids()] == [0, 1, 2, 3]  # and the trials ran in that order


# -- when the agent stops ----------------------------------------------------------------------------------
def test_an_agent_out_of_ideas_stops_the_loop_and_leaves_no_half_trial(tmp_path: Path) -> None:
    ideas = [idea("A up", sub("A = 0.0", "A = 0.1")), idea("B down", sub("B = 0.0", "B = -0.1"))]
    lab = make_lab(tmp_path, loss, ideas=ideas)
    why = lab.run()
    assert why.startswith("the agent has no more ideas (all 2 ideas in ") and why.endswith("have been tried)")
    check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "keep", [0.9]), (2, "discard", [1.0])]
    assert (Event.PROPOSE, 3) in lab.events and (Event.DONE, 3) not in lab.events
    assert not lab.run_dir(3).exists() and lab.fake.ids(3) == []


def test_an_agent_out_of_ideas_beside_a_running_trial_lets_that_trial_finish(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, loss, slots=2)
    lab.agent = Knobs({1: {"A": 0.1}})
    assert lab.run() == "the agent has no more ideas (no idea for trial 2)"
    check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "keep", [0.9])]
    assert not lab.run_dir(2).exists() and lab.fake.ids(2) == []


def test_rejected_proposals_in_a_row_count_toward_max_failures(tmp_path: Path) -> None:
    ideas = [idea("edit the evaluation", sub("prepared", "tampered", file="prepare.py")),
             idea("A up", sub("A = 0.0", "A = 0.1")),  # a proposal that runs: the count starts again
             idea("search for what is not there", sub("D = 0.0", "D = 0.1")),
             idea("only take notes", content("nothing to try\n", "scratchpad.md")),
             idea("never asked", sub("B = 0.0", "B = 0.1"))]
    lab = make_lab(tmp_path, loss, ideas=ideas, config={"agent": {"max_failures": 2}})
    assert lab.run() == "the agent failed 2 times in a row (last: no change to train.py)"
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "rejected", []), (2, "keep", [0.9]), (3, "rejected", []),
                           (4, "rejected", [])]
    assert rows[1]["reason"] == "changed prepare.py (only scratchpad.md, train.py may change)"
    assert "search text 'D = 0.0' not found" in rows[3]["reason"]
    assert lab.fake.ids() == ["0.0a0s1", "2.0a0s1"]  # a rejected proposal never runs
    assert (lab.proj.worktree(TAG) / "prepare.py").read_text() == 'print("prepared")\n'  # the edit was undone
