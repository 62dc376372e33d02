"""One trial's other paths, in-process over the fake executor (tests/schedkit.py): failed runs and proposals,
errors that are bugs, the limits, a reproposing agent's rebase, per-example pairing, and what a resume
redoes. Each test drives the real loop; only training is fake, so each runs in about a second."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from array import array
from pathlib import Path

import pytest

from fakes import FakeExecutor, failed, lost, ok, parse
from nightlab.errors import AgentFailed, RunCrashed
from nightlab.per_example import Examples
from nightlab.types import Brief, Event, Proposal, RunOutcome, Status
from nlkit import commit_message
from schedkit import TAG, Knobs, check_git, interrupt, loss, make_lab, noisy, race

pytestmark = pytest.mark.timeout(120)  # a held run nobody releases would wait forever: fail instead

TAIL = "step 1\nTraceback (most recent call last):\nZeroDivisionError: boom\n"


@pytest.fixture(autouse=True)
def _no_identity(no_git_identity: Path) -> None:
    """The loop's own git commits run in this process: as in nlkit's CLI runs, git knows no user."""


# -- failed runs and proposals ------------------------------------------------------------------------------
def test_a_crashed_run_is_recorded_with_its_reason_and_the_next_brief_shows_its_log(tmp_path: Path) -> None:
    def answer(job) -> RunOutcome:
        return failed(job, log=TAIL) if parse(job.id)[0] in (1, 2) else loss(job)

    lab = make_lab(tmp_path, answer, config={"agent": {"max_failures": 1}})
    lab.agent = Knobs({1: {"A": 0.1}, 2: {"B": 0.1}, 3: {"C": 0.3}})
    # two crashes in a row are the code's failures, not the agent's: max_failures 1 does not stop the loop
    assert lab.run(max_trials=3) == "reached --max-trials 3"
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "crash", []), (2, "crash", []), (3, "keep", [0.7])]
    assert (rows[1]["reason"], rows[1]["metric"], rows[1]["seconds"], rows[1]["hardware"]) == (
        "exit code 1", None, 1.0, "cpu")  # a failed run's time still counts
    assert rows[2]["parent"] == rows[3]["parent"] == rows[0]["commit_sha"]  # a crash leaves the best where it was
    assert lab.runs(1) == [("1.0a0s1", 0, 0, 0, "crash", None)]
    assert commit_message(lab.proj, f"refs/nightlab/{TAG}/trial-1").splitlines() == [
        "trial 1: A = 0.1", "", "val_loss: — (best 1.00000)", "status: crash (exit code 1)", "phase: 1 Hyperparameters"]
    # the agent is shown why the last trial failed, and only then
    assert "ZeroDivisionError: boom" not in (lab.run_dir(1) / "brief.md").read_text()
    for n in (2, 3):
        brief = (lab.run_dir(n) / "brief.md").read_text()
        assert "## The last failure's log tail" in brief and "ZeroDivisionError: boom" in brief
    assert "ZeroDivisionError" not in (lab.proj.state(TAG) / "results.tsv").read_text()


@pytest.mark.parametrize("status, reason", [(Status.TIMEOUT, "timed out after 30 s"),
                                            (Status.INVALID, "peak_memory_gb 5 > max 1")])
def test_a_run_that_times_out_or_breaks_a_constraint_ends_its_trial_with_that_status(
        tmp_path: Path, status: Status, reason: str) -> None:
    def answer(job) -> RunOutcome:
        return failed(job, status, reason) if parse(job.id)[0] == 1 else loss(job)

    lab = make_lab(tmp_path, answer)
    lab.agent = Knobs({1: {"A": 0.3}, 2: {"B": 0.1}})
    lab.run(max_trials=2)
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, status.value, []), (2, "keep", [0.9])]
    assert rows[1]["reason"] == reason and rows[1]["delta"] is None
    assert lab.fake.ids(1) == ["1.0a0s1"]  # run once: only a lost run is run again


def test_a_lost_confirmation_run_is_run_again_with_its_seed_in_a_cleared_directory(tmp_path: Path) -> None:
    values = {"0.0": 1.02, "0.1": 0.98, "1.0": 0.92, "1.1": 0.88}  # 0.92 alone is uncertain: one more run

    def answer(job) -> RunOutcome:
        n, k, _, _ = parse(job.id)
        return lost(job) if job.id == "1.1a0s1" else ok(job, values[f"{n}.{k}"])

    lab = make_lab(tmp_path, answer, config={"keep": {"noise_runs": 2, "confirm": 1}})
    lab.agent = Knobs({1: {"A": 0.1}})
    lab.run(max_trials=1)
    check_git(lab)
    assert lab.table() == [(0, "baseline", [1.02, 0.98]), (1, "keep", [0.92, 0.88])]
    assert lab.runs(1) == [("1.0a0s1", 0, 0, 0, "ok", 0.92), ("1.1a0s1", 1, 0, 0, "lost", None),
                           ("1.1a1s1", 1, 1, 0, "ok", 0.88)]
    assert [s.job.spec.seed for s in lab.fake.submitted if parse(s.job.id)[0] == 1] == [1000, 1001, 1001]
    assert [p.name for p in (lab.run_dir(1) / "repeat-1").iterdir()] == ["fake-1.1a1s1.log"]
    assert "fake-1.0a0s1.log" in {p.name for p in lab.run_dir(1).iterdir()}  # run 0's output is not touched
    assert [e for e, n in lab.events if n == 1] == [Event.PROPOSE, Event.RUN, Event.CONFIRM, Event.LOST, Event.DONE]


class CostsMoney(Knobs):
    """Knobs at $0.25 a proposal; its attempt at trial 1 fails after spending tokens."""

    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        if brief.trial == 1:
            error = AgentFailed("the model never called a tool")
            error.proposal = Proposal(description="", cost_usd=0.25, tokens_in=1000, tokens_out=50,
                                      transcript="thought about it\n")
            raise error
        return dataclasses.replace(super().propose(workspace, brief), cost_usd=0.25)


def test_a_failed_proposal_records_what_it_cost_and_that_counts_toward_max_cost(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, loss, config={"agent": {"max_cost_usd": 0.5}})
    lab.agent = CostsMoney({2: {"A": 0.1}, 3: {"B": 0.1}})
    assert lab.run() == "reached max_cost_usd 0.5"
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "rejected", []), (2, "keep", [0.9])]
    assert (rows[1]["reason"], rows[1]["cost_usd"], rows[1]["tokens_in"], rows[1]["tokens_out"]) == (
        "the model never called a tool", 0.25, 1000, 50)
    assert rows[1]["commit_sha"] == "" and lab.fake.ids(1) == []  # nothing to run
    assert (lab.run_dir(1) / "agent.log").read_text() == "thought about it\n"


class Buggy(Knobs):
    """Knobs, except that its first attempt at trial 2 hits a bug (not one of nightlab's errors)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.broke = False

    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        if brief.trial == 2 and not self.broke:
            self.gates[2]()
            self.broke = True
            raise ValueError("a bug in the agent")
        return super().propose(workspace, brief)


@pytest.mark.parametrize("slots", [1, 2], ids=["inline", "in-a-thread"])
def test_a_bug_in_the_agent_propagates_and_a_resume_asks_again_under_the_same_number(
        tmp_path: Path, slots: int) -> None:
    lab = make_lab(tmp_path, loss, slots=slots, hold=("1.0",) if slots == 2 else ())
    # with two slots, trial 2's proposal fails while trial 1 runs (held)
    lab.agent = Buggy({1: {"A": 0.1}, 2: {"B": 0.2}}, gates={2: lambda: lab.fake.wait_submitted("1.0")})
    with pytest.raises(ValueError, match="^a bug in the agent$"):  # a bug is never turned into a rejected trial
        lab.run(max_trials=2)
    left = [(r["n"], r["status"], bool(r["commit_sha"])) for r in lab.trials()]
    assert left == [(0, "baseline", True), (1, "keep" if slots == 1 else "running", True), (2, "running", False)]
    assert lab.fake.cancelled == ([] if slots == 1 else ["1.0a0s1"])
    lab.fake, lab.agent.gates = FakeExecutor(loss), {}
    assert lab.run(max_trials=2) == "reached --max-trials 2"
    check_git(lab)
    assert [(n, status) for n, status, _ in lab.table()] == [(0, "baseline"), (1, "keep"), (2, "keep")]
    assert lab.trials()[2]["metric"] == pytest.approx(0.7)
    assert lab.agent.proposed == [1, 2]  # trial 1's proposal was kept; trial 2's made once it worked


# -- limits ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("limits, why, trials", [
    ({"compute_s": 3}, "reached the compute budget of 3 s of runs", 3),  # each fake run takes 1 s, the baseline's too
    ({"hours": 0}, "reached --hours 0", 1),  # the baseline runs whatever the time
])
def test_the_loop_stops_at_its_limits_between_trials(tmp_path: Path, limits: dict, why: str, trials: int) -> None:
    lab = make_lab(tmp_path, loss)
    lab.agent = Knobs({1: {"A": 0.1}, 2: {"B": 0.1}, 3: {"C": 0.1}})
    assert lab.run(**limits) == why
    check_git(lab)
    assert [r["status"] for r in lab.trials()] == ["baseline", "keep", "keep"][:trials]


# -- a reproposing agent (its proposal is absolute values, not a diff) ----------------------------------------
class Reproposes(Knobs):
    reproposes = True


class RefusesTheNewBest(Reproposes):
    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        if brief.trial in self.proposed:
            raise AgentFailed("nothing to propose on this code")
        return super().propose(workspace, brief)


def test_a_reproposing_agent_is_asked_again_on_the_new_best_instead_of_a_cherry_pick(tmp_path: Path) -> None:
    # Both trials set knob A: a cherry-pick would not apply (the trial would be stale); asked again, it does.
    lab = race(tmp_path, {1: {"A": 0.1}, 2: {"A": 0.2}}, agent=Reproposes)
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "keep", [0.9]), (2, "keep", [0.8])]
    assert rows[2]["reason"] == "rebased onto trial 1" and rows[2]["delta"] == pytest.approx(-0.1)
    assert lab.agent.proposed == [1, 2, 2]
    assert lab.fake.ids(2) == ["2.0a0s1", "2.1a0s1"]
    assert lab.git("rev-parse", f"{rows[2]['commit_sha']}^") == rows[1]["commit_sha"]
    assert "A = 0.2" in lab.git("show", f"nightlab/{TAG}:train.py")
    assert "+A = 0.2" in (lab.run_dir(2) / "diff.patch").read_text()  # the patch against its new parent


def test_a_reproposing_agent_that_fails_on_the_new_best_leaves_the_trial_stale(tmp_path: Path) -> None:
    lab = race(tmp_path, {1: {"A": 0.1}, 2: {"B": 0.2}}, agent=RefusesTheNewBest)
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "keep", [0.9]), (2, "discard", [0.8])]
    assert rows[2]["reason"] == "stale: its change no longer applies to the best (trial 1)"
    assert rows[2]["description"] == "B = 0.2"  # what it tried, not the failed attempt's
    assert lab.git("rev-parse", f"{rows[2]['commit_sha']}^") == rows[0]["commit_sha"]
    assert "B = 0.2" in lab.git("show", f"{rows[2]['commit_sha']}:train.py")
    assert lab.fake.ids(2) == ["2.0a0s1"]


# -- per-example values ---------------------------------------------------------------------------------------
def with_examples(answer, counts: dict[str, int | None], spread: dict[str, float] | None = None):
    """`answer`, its runs reporting per-example values: `counts[job key]` of them (None: none; else 4), spread by
    `spread[job key]` from one to the next around the run's value (their mean)."""
    def answered(job) -> RunOutcome:
        out, name = answer(job), f"{parse(job.id)[0]}.{parse(job.id)[1]}"
        if (count := counts.get(name, 4)) is not None:
            step = (spread or {}).get(name, 0.0)
            out.examples = Examples(array("d", [out.values["val_loss"] + step * (i - (count - 1) / 2)
                                                 for i in range(count)]))
        return out
    return answered


def test_a_run_whose_examples_cannot_be_paired_with_the_baselines_is_invalid(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, with_examples(loss, {"1.0": 3, "2.0": None}))  # every other run reports 4
    lab.agent = Knobs({1: {"A": 0.2}, 2: {"B": 0.2}, 3: {"C": 0.1}})
    lab.run(max_trials=3)
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "invalid", []), (2, "invalid", []), (3, "keep", [0.9])]
    assert rows[1]["reason"] == ("per-example values: 3 given, the baseline reported 4 "
                                 "(the same examples in the same order in every run)")
    assert rows[2]["reason"] == "per-example values missing (the baseline reported 4)"
    assert lab.proj.rows("SELECT trial, count FROM examples ORDER BY trial", TAG) == [
        {"trial": 0, "count": 4}, {"trial": 3, "count": 4}]


# -- the baseline ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("counts, why", [
    ({"0.1": None}, "per-example values missing (the baseline reported 4)"),
    ({"0.0": None}, "per-example values reported by only some runs"),
    ({"0.1": 5}, "per-example values: 5 given, the baseline reported 4"),
])
def test_a_baseline_whose_runs_disagree_on_their_examples_stops_the_run(tmp_path: Path, counts: dict, why: str) -> None:
    lab = make_lab(tmp_path, with_examples(loss, counts), config={"keep": {"noise_runs": 2}})
    lab.agent = Knobs({1: {"A": 0.1}})
    with pytest.raises(RunCrashed, match=rf"^the baseline failed \(invalid: {re.escape(why)}"):
        lab.run(max_trials=1)
    assert lab.table() == [] and lab.agent.proposed == []  # nothing is judged against a baseline it cannot pair


def test_a_crashed_baseline_is_not_run_again_and_says_where_its_log_is(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, lambda job: failed(job, log=TAIL))
    with pytest.raises(RunCrashed) as e:
        lab.run(max_trials=1)
    assert str(e.value) == (f"the baseline failed (crash: exit code 1); fix it before searching "
                            f"(see {lab.run_dir(0)}/run.log)")
    assert lab.fake.ids() == ["0.0a0s1"] and lab.table() == []
    assert "ZeroDivisionError: boom" in (lab.run_dir(0) / "run.log").read_text()


def test_identical_runs_whose_examples_differ_are_not_deterministic(tmp_path: Path) -> None:
    # The same mean twice, from different per-example values: the evaluation is not deterministic after all.
    lab = make_lab(tmp_path, with_examples(loss, {}, spread={"0.0": 0.1, "0.1": -0.1}),
                   config={"keep": {"noise_runs": 3}})
    lab.run(max_trials=0)
    assert lab.fake.ids() == ["0.0a0s1", "0.1a0s1", "0.2a0s1"]  # every noise run, not two
    meta = lab.proj.rows("SELECT key, value FROM meta WHERE key IN ('deterministic', 'examples')", TAG)
    assert {r["key"]: r["value"] for r in meta} == {"deterministic": "false", "examples": "4"}


# -- what a resume redoes ---------------------------------------------------------------------------------------
def test_a_baseline_stopped_between_its_runs_is_measured_again_from_scratch(tmp_path: Path) -> None:
    def stops_at_the_second_run(job) -> RunOutcome:
        if job.id == "0.1a0s1":
            raise KeyboardInterrupt
        return noisy(job)

    lab = make_lab(tmp_path, stops_at_the_second_run, config={"keep": {"noise_runs": 2}})
    with pytest.raises(KeyboardInterrupt):
        lab.run(max_trials=0)
    assert lab.table() == [(0, "running", [])]
    lab.fake = FakeExecutor(noisy)
    assert lab.run(max_trials=0) == "reached --max-trials 0"
    assert lab.table() == [(0, "baseline", [1.02, 0.98])]  # both runs of this session; the first run's is gone
    assert [(r[0], r[4]) for r in lab.runs(0)] == [("0.0a0s1", "ok"), ("0.1a0s1", "interrupted"),
                                                   ("0.0a0s2", "ok"), ("0.1a0s2", "ok")]
    assert sorted(p.name for p in lab.run_dir(0).rglob("fake-*")) == ["fake-0.0a0s2.log", "fake-0.1a0s2.log"]


class Remembers(Knobs):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.told: list[tuple[int, str, float | None]] = []

    def observe(self, trial: int, status: Status, metric: float | None) -> None:
        self.told.append((trial, str(status), metric))


def test_a_resume_tells_a_new_agent_the_baseline_and_the_last_outcome_before_it_proposes(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, loss)
    lab.agent = Remembers({1: {"A": 0.1}, 2: {"B": 0.1}})
    lab.run(max_trials=2)
    assert [t[:2] for t in lab.agent.told] == [(0, "baseline"), (1, "keep"), (2, "keep")]
    lab.agent = Remembers({3: {"C": 0.1}})  # e.g. a fresh process: it knows nothing of the tag
    lab.run(max_trials=3)
    assert lab.agent.told == [(0, "baseline", 1.0), (2, "keep", pytest.approx(0.8)), (3, "keep", pytest.approx(0.7))]
    assert lab.agent.proposed == [3]


def test_max_trials_counts_the_whole_tag_across_sessions(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, loss)
    lab.agent = Knobs({1: {"A": 0.1}, 2: {"B": 0.1}, 3: {"C": 0.1}})
    lab.run(max_trials=2)
    lab.fake = FakeExecutor(loss)
    assert lab.run(max_trials=2) == "reached --max-trials 2"  # nothing more to do: nothing proposed, nothing run
    assert lab.fake.ids() == [] and lab.agent.proposed == [1, 2]
    assert lab.run(max_trials=3) == "reached --max-trials 3"
    assert lab.fake.ids() == ["3.0a0s3"] and lab.table()[-1] == (3, "keep", [pytest.approx(0.7)])
    check_git(lab)


# -- the worktrees trials borrow ------------------------------------------------------------------------------
def test_trials_in_flight_run_in_one_spare_worktree_per_slot_never_in_the_branchs(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, loss, slots=2)
    # one win, then losers: whichever order the threads propose in, no trial is rebased
    lab.agent = Knobs({1: {"A": 0.1}, 2: {"B": -0.1}, 3: {"C": -0.05}, 4: {"B": -0.2}, 5: {"C": -0.1}})
    lab.run(max_trials=5)
    assert [r["status"] for r in check_git(lab)] == ["baseline", "keep", "discard", "discard", "discard", "discard"]
    branch = lab.proj.worktree(TAG).resolve()
    where = {s.key: Path(s.job.spec.cwd).resolve() for s in lab.fake.submitted}
    assert where.pop("0.0") == branch  # the baseline runs on the branch itself
    assert len(set(where.values())) == 2 and branch not in where.values()  # two slots: two spares, reused
    for spare in set(where.values()):  # each left at a trial's commit, not on the branch
        assert lab.git("-C", str(spare), "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"


def test_a_trial_kept_after_a_later_numbered_one_is_the_best_and_the_next_trial_starts_from_it(tmp_path: Path) -> None:
    # Trial 2 is kept while trial 1 (C) still runs; trial 1 is then rebased onto trial 2 and kept too: the best
    # is trial 1 now, the one recorded last, though it has the lower number.
    lab = make_lab(tmp_path, loss, slots=2, hold=("1.0",))
    lab.agent = Knobs({1: {"C": 0.3}, 2: {"A": 0.1}, 3: {"B": 0.1}}, gates={2: lambda: lab.fake.wait_submitted("1.0")})
    lab.hooks[(Event.DONE, 2)] = lambda: lab.fake.release("1.0")
    lab.run(max_trials=2)
    rows = check_git(lab)
    assert lab.table() == [(0, "baseline", [1.0]), (1, "keep", [0.6]), (2, "keep", [0.9])]
    assert rows[1]["parent"] == rows[2]["commit_sha"] and rows[1]["reason"] == "rebased onto trial 2"
    assert lab.git("rev-parse", f"nightlab/{TAG}") == rows[1]["commit_sha"]
    lab.fake, lab.agent.gates, lab.hooks = FakeExecutor(loss), {}, {}
    lab.run(max_trials=3)
    rows = check_git(lab)
    assert rows[3]["parent"] == rows[1]["commit_sha"] and rows[3]["status"] == "keep"
    assert rows[3]["delta"] == pytest.approx(-0.1)  # against trial 1's 0.6, not trial 2's 0.9
    best = lab.git("show", f"nightlab/{TAG}:train.py")
    assert all(line in best for line in ("A = 0.1", "B = 0.1", "C = 0.3"))


def test_a_proposal_cut_short_below_a_committed_trial_is_made_again_under_its_number(tmp_path: Path) -> None:
    # Two slots: trial 1's agent is still thinking when trial 2, proposed beside it, starts its run and nightlab
    # stops. On resume trial 1 is asked again as trial 1 (no gap in the numbers), and --max-trials counts it.
    go, left = threading.Event(), threading.Event()

    def still_thinking() -> None:
        try:
            go.wait(60)
        finally:  # the Ctrl-C nightlab passed to this thread lands here, once it wakes
            left.set()

    lab = make_lab(tmp_path, loss, slots=2)
    lab.agent = Knobs({1: {"A": -0.1}, 2: {"B": 0.2}, 3: {"C": 0.1}}, gates={1: still_thinking})
    lab.hooks[(Event.RUN, 2)] = interrupt
    with pytest.raises(KeyboardInterrupt):
        lab.run(max_trials=3)
    go.set()
    assert left.wait(60)
    assert [(r["n"], r["status"], bool(r["commit_sha"])) for r in lab.trials()] == [
        (0, "baseline", True), (1, "running", False), (2, "running", True)]
    lab.fake, lab.agent.gates, lab.hooks = FakeExecutor(loss), {}, {}
    assert lab.run(max_trials=3) == "reached --max-trials 3"
    rows = check_git(lab)  # trial numbers 0, 1, 2, 3 once each
    assert [(r["n"], r["status"], r["description"]) for r in rows] == [
        (0, "baseline", "baseline"), (1, "discard", "A = -0.1"), (2, "keep", "B = 0.2"), (3, "keep", "C = 0.1")]
    assert lab.agent.proposed == [2, 1, 3] and rows[1]["seed"] == 1000


def test_keeps_recorded_while_the_clock_steps_back_stay_in_order(tmp_path: Path, monkeypatch) -> None:
    # The best is the keep recorded last (a rebased trial may be kept after a later-numbered one). A wall clock
    # that steps back (NTP) between two keeps must not make the earlier keep the best again.
    import time

    clock = iter(range(2_000_000_000, 0, -60))  # a minute earlier at every reading
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    lab = make_lab(tmp_path, loss)
    lab.agent = Knobs({1: {"A": 0.1}, 2: {"B": 0.1}})
    assert lab.run(max_trials=2) == "reached --max-trials 2"
    rows = check_git(lab)  # the branch is at the best, and the chain of keeps is in the order they were recorded
    assert [(r["status"], r["runs"]) for r in rows] == [("baseline", [1.0]), ("keep", [0.9]), ("keep", [0.8])]
    assert rows[2]["finished"] > rows[1]["finished"] > rows[0]["finished"]
    assert lab.git("rev-parse", f"nightlab/{TAG}") == rows[2]["commit_sha"]


def test_a_file_named_in_bytes_that_are_not_utf8_is_refused_on_record_and_the_night_goes_on(tmp_path: Path) -> None:
    """An agent may write any name the file system takes; git and the ledger see it, the trial is refused in a line
    the ledger holds, the file is gone, and the next trial runs."""
    stray = os.fsdecode(b"caf\xe9.py")

    class Stray(Knobs):
        def propose(self, workspace: Path, brief: Brief) -> Proposal:
            if brief.trial == 1:
                (workspace / stray).write_text("X = 1\n")
            return super().propose(workspace, brief)

    lab = make_lab(tmp_path, loss)
    lab.agent = Stray({1: {"A": 0.1}, 2: {"B": 0.2}})
    assert lab.run(max_trials=2) == "reached --max-trials 2"
    rows = check_git(lab)
    assert [r["status"] for r in rows] == ["baseline", "rejected", "keep"]
    assert rows[1]["reason"].startswith("changed caf\ufffd.py (only ")
    assert not (lab.proj.state(TAG) / "worktree" / stray).exists()
