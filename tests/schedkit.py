"""The loop built in-process over the fake executor (tests/fakes.py), for the scheduler and trial tests.

`make_lab` makes a tiny real project whose train.py holds three knobs; `Lab.run` builds a Loop as
`nightlab run` does (a resume, after the first). The fake executor scores a run from the knobs it carries
(`loss`, `noisy`); the `Knobs` agent sets knobs per trial, from several threads at once, after an optional
gate that waits for a state of the loop. `race` and `stopped_with_two_trials_running` are the two-slot
situations several tests start from; `check_git` asserts what every run must leave in git.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fakes import FakeExecutor, Submitted, knobs, ok, parse
from nightlab import config, project
from nightlab.agents.scripted import ScriptedAgent
from nightlab.errors import AgentExhausted
from nightlab.ledger import Ledger, TrialRecord
from nightlab.loop import Limits, Loop
from nightlab.types import Brief, Event, Proposal, RunOutcome, Status
from nightlab.workspace import Workspace
from nlkit import Project, make_project

TAG = "t"
# Never run: the fake executor reads its knobs (see `loss`). Spacers keep changes to different knobs
# apart, so git can re-apply one on top of another.
TRAIN = '''"""A training script the fake executor reads instead of running."""

A = 0.0

# a spacer

B = 0.0

# another spacer

C = 0.0
'''
CONFIG = {"metric": {"name": "val_loss", "goal": "minimize", "constraints": []}, "keep": {"noise_runs": 1}}


def loss(job) -> RunOutcome:
    """The same number for every run of the same code: 1 - A - B - C."""
    return ok(job, round(1.0 - sum(knobs(job).values()), 9))


def noisy(job) -> RunOutcome:
    """As `loss`, plus seed noise by run index: run 0 reads 0.02 worse, run 1 0.02 better."""
    k = parse(job.id)[1]
    return ok(job, round(1.0 - sum(knobs(job).values()) + {0: 0.02, 1: -0.02}.get(k, 0.0), 9))


class Knobs:
    """Trial n sets the knobs `ideas[n]` in train.py (no entry: no more ideas), after `gates[n]()` if any.

    It proposes from several threads at once, so a gate can wait for the loop's state (a run submitted)
    without holding up another trial's proposal."""

    concurrent = True

    def __init__(self, ideas: dict[int, dict[str, float]], gates: dict[int, Callable[[], None]] | None = None):
        self.ideas, self.gates, self.proposed = ideas, gates or {}, []

    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        self.gates.get(brief.trial, lambda: None)()
        if brief.trial not in self.ideas:
            raise AgentExhausted(f"no idea for trial {brief.trial}")
        self.proposed.append(brief.trial)
        path = workspace / "train.py"
        text = path.read_text()
        for name, value in self.ideas[brief.trial].items():
            text = re.sub(rf"^{name} = .*$", f"{name} = {value}", text, count=1, flags=re.MULTILINE)
        path.write_text(text)
        return Proposal(description=", ".join(f"{k} = {v}" for k, v in self.ideas[brief.trial].items()))

    def observe(self, trial: int, status: Status, metric: float | None) -> None:
        pass


@dataclass
class Lab:
    """A project and a fake executor; each `run` builds a Loop as a `nightlab run` does (a resume, after the first)."""

    proj: Project
    fake: FakeExecutor
    agent: object | None = None  # None: the scripted agent over the project's ideas.toml
    events: list[tuple[Event, int]] = field(default_factory=list)
    hooks: dict[tuple[Event, int], Callable[[], None]] = field(default_factory=dict)

    def run(self, max_trials: int | None = None, pipeline: bool = False, **limits: float) -> str:
        """Why the loop stopped; `limits`: the other Limits (hours, compute_s)."""
        cfg = config.load(self.proj.dir / "nightlab.toml")
        state = project.state_dir(cfg, TAG)
        ws = Workspace(cfg.root, TAG, list(cfg.project.editable), cfg.project.scratchpad)
        ws.open(fresh=not (state / "ledger.sqlite").exists())
        ws.link_data(project.visible_data(cfg))
        ledger = Ledger(state / "ledger.sqlite")
        agent = self.agent or ScriptedAgent(cfg, state)
        try:
            loop = Loop(cfg, ws, ledger, agent, self.fake, state, self.notify, pipeline=pipeline)
            return loop.run(Limits(max_trials=max_trials, **limits))
        finally:
            ledger.close()

    def notify(self, event: Event, rec: TrialRecord) -> None:
        self.events.append((event, rec.n))
        self.hooks.get((event, rec.n), lambda: None)()

    # -- what it left ------------------------------------------------------------------------------
    def trials(self) -> list[dict]:
        return self.proj.ledger(TAG)

    def table(self) -> list[tuple]:
        """(n, status, runs) of every trial."""
        return [(r["n"], r["status"], r["runs"]) for r in self.trials()]

    def runs(self, trial: int) -> list[tuple]:
        """The ledger's runs of one trial: (job, k, attempt, slot, status, value), in the order they started."""
        rows = self.proj.rows(f"SELECT * FROM runs WHERE trial = {trial} ORDER BY rowid", TAG)
        return [(r["job"], r["k"], r["attempt"], r["slot"], r["status"], r["value"]) for r in rows]

    def git(self, *args: str) -> str:
        return self.proj.git(*args)

    def run_dir(self, n: int) -> Path:
        return self.proj.state(TAG) / "runs" / str(n)


def make_lab(tmp_path: Path, answer: Callable, slots: int = 1, hold: tuple[str, ...] = (),
             ideas: list[dict] | None = None, config: dict | None = None) -> Lab:
    settings = {**CONFIG, **(config or {})}
    proj = make_project(tmp_path, train=TRAIN, config=settings, ideas=ideas)
    return Lab(proj, FakeExecutor(answer, slots=slots, hold=hold))



def check_git(lab: Lab) -> list[dict]:
    """The branch is the chain of keeps ending at the best, every trial's ref is its commit, nothing is dirty."""
    rows = lab.trials()
    assert [r["n"] for r in rows] == list(range(len(rows))), "trial numbers are 0, 1, 2, ... once each"
    refs = lab.git("for-each-ref", "--format=%(refname:short) %(objectname)", f"refs/nightlab/{TAG}/")
    assert dict(line.split() for line in refs.splitlines()) == {
        f"nightlab/{TAG}/trial-{r['n']}": r["commit_sha"] for r in rows if r["commit_sha"]}
    # in the order they were recorded: a trial rebased onto a later-numbered keep may be kept after it
    chain = sorted((r for r in rows if r["status"] in ("baseline", "keep")), key=lambda r: (r["finished"], r["n"]))
    assert lab.git("rev-parse", f"nightlab/{TAG}") == chain[-1]["commit_sha"]
    for before, after in zip(chain, chain[1:]):
        assert after["parent"] == before["commit_sha"] == lab.git("rev-parse", f"{after['commit_sha']}^")
    assert lab.proj.git("-C", str(lab.proj.worktree(TAG)), "status", "--porcelain") == ""
    return rows


def ran(submitted: Submitted) -> str:
    """The train.py a job ran (its editable files go with it by value), as `git show` prints it."""
    return submitted.job.files["train.py"].decode().strip()

def race(tmp_path: Path, ideas: dict[int, dict[str, float]], max_trials: int = 2, agent: type[Knobs] = Knobs) -> Lab:
    """Two slots: trials 1 and 2 both start from the baseline and both run; trial 1 finishes first.

    Trial 2 is proposed only once trial 1's run is submitted, and trial 1's run answers only once
    trial 2's has started, so the slots (0 and 1) and the order are fixed."""
    lab = make_lab(tmp_path, loss, slots=2, hold=("1.0", "2.0"))
    lab.agent = agent(ideas, gates={2: lambda: lab.fake.wait_submitted("1.0")})
    lab.hooks[(Event.RUN, 2)] = lambda: lab.fake.release("1.0")
    lab.hooks[(Event.DONE, 1)] = lambda: lab.fake.release("2.0")
    assert lab.run(max_trials=max_trials) == f"reached --max-trials {max_trials}"
    return lab


def interrupt() -> None:
    raise KeyboardInterrupt


def stopped_with_two_trials_running(tmp_path: Path, answer: Callable, config: dict | None = None) -> Lab:
    """A two-slot run stopped (Ctrl-C) as trial 2's run starts beside trial 1's (A = 0.1 and B = 0.2)."""
    lab = make_lab(tmp_path, answer, slots=2, hold=("1.0", "2.0"), config=config)
    lab.agent = Knobs({1: {"A": 0.1}, 2: {"B": 0.2}, 3: {"C": 0.05}}, gates={2: lambda: lab.fake.wait_submitted("1.0")})
    lab.hooks[(Event.RUN, 2)] = interrupt
    with pytest.raises(KeyboardInterrupt):
        lab.run(max_trials=2)
    assert [(r["n"], r["status"], bool(r["commit_sha"])) for r in lab.trials()][1:] == [
        (1, "running", True), (2, "running", True)]
    assert lab.fake.cancelled == ["1.0a0s1"]  # the run in flight was stopped on the way out
    lab.agent.gates, lab.hooks = {}, {}
    return lab


