"""What every trial of a tag shares: the config, the branch, the ledger, the agent, the state directory and the
notifier, with the reads all trials need (the best, the seed noise, a finished trial's per-example values)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from nightlab import crashpoint, metrics, per_example, program
from nightlab.agents import Agent, capable, reply
from nightlab.config import Config
from nightlab.executors import Job
from nightlab.ledger import Ledger, TrialRecord
from nightlab.runspec import run_spec
from nightlab.types import Brief, Event, Proposal, RunEnd, RunOutcome, Status
from nightlab.views import Tsv
from nightlab.workspace import Workspace

PROPOSAL_FILES = ("brief.md", "agent.log", "diff.patch")  # in runs/<n>/ beside run 0's own files


@dataclass
class Lab:
    cfg: Config
    ws: Workspace  # the tag's branch, in the project's own worktree
    ledger: Ledger
    agent: Agent
    state_dir: Path
    notify: Callable[[Event, TrialRecord], None] = lambda event, rec: None
    session: int = 0  # counts `nightlab run` invocations of the tag, so job ids stay unique across resumes
    agent_lock: threading.Lock | None = field(init=False)
    example_cache: dict[int, per_example.Examples | None] = field(default_factory=dict, init=False)
    tsv: Tsv | None = field(default=None, init=False)
    made: set[Path] = field(default_factory=set, init=False)  # run directories known to exist (run_dir)

    def __post_init__(self) -> None:
        # An agent that is not `concurrent` is asked by one trial at a time, whatever the slots.
        self.agent_lock = None if capable(self.agent, "concurrent") else threading.Lock()

    def ask(self, ws: Workspace, brief: Brief, rec: TrialRecord) -> Proposal:
        """The agent's proposal; the seconds it took (failed or not) are added to `rec`'s agent_seconds."""
        with self.agent_lock or nullcontext():
            ws.lend()
            start = time.monotonic()
            try:
                return self.agent.propose(ws.dir, brief)
            finally:
                rec.agent_seconds += time.monotonic() - start

    def brief(self, n: int, ws: Workspace, tail: bool = False) -> Brief:
        """Trial n's brief, written against the best as it is now and the scratchpad as `ws` holds it; `tail`:
        with the end of the last trial's log when it crashed or timed out."""
        pad = ws.dir / self.cfg.project.scratchpad
        scratchpad = pad.read_text(errors="replace") if pad.is_file() else ""
        # Without phases the brief shows the last RECENT trials and the last failure, one of the last few: a read
        # that does not grow with the ledger. Phase gates count a whole phase's trials.
        written = program.read_program(self.cfg)  # once a trial: a user may edit it during the night
        window = None if written[1] else program.RECENT + self.cfg.executor.slots + 1
        trials = self.ledger.trials(last=window)
        return program.brief(self.cfg, n, trials, self.best().metric, self.noise(), scratchpad,
                             self._failure_tail(trials) if tail else "", self.ledger.get("eval_se"), ws.dir,
                             reply(self.agent), written)

    def _failure_tail(self, trials: list[TrialRecord]) -> str:
        """The end of the last finished trial's log when it crashed or timed out (the agent should see why)."""
        last = next((t for t in reversed(trials) if t.status != Status.RUNNING), None)
        if last and last.status in (Status.CRASH, Status.TIMEOUT):
            return metrics.log_tail(self.run_dir(last.n) / "run.log")
        return ""

    def tabulate(self, rec: TrialRecord | None = None) -> None:
        """results.tsv with `rec` as it was just recorded (None: all of it again from the ledger, as on a resume)."""
        if rec is None or self.tsv is None:
            self.tsv = Tsv(self.state_dir / "results.tsv", self.cfg.metric.name, self.ledger.trials())
            self.tsv.write()
        else:
            self.tsv.update(rec)

    def best(self) -> TrialRecord:
        best = self.ledger.best()
        assert best is not None, "no baseline"
        return best

    def noise(self) -> float | None:
        return self.ledger.get("noise")

    def examples(self, n: int) -> per_example.Examples | None:
        """A finished trial's per-example values averaged over its runs (kept and baseline ones never change)."""
        if n not in self.example_cache:
            self.example_cache[n] = self.ledger.mean_examples(n)
        return self.example_cache[n]

    def job(self, rec: TrialRecord, tree: Workspace, k: int, attempt: int, slot: int,
            budget_s: float | None = None) -> Job:
        """Run k of a trial's commit as `tree` holds it, with the editable files by value for remote workers; the
        ledger holds it as running before it starts."""
        here, run_dir = tree.dir, self.run_dir(rec.n, k)
        tree.lend()  # a run may write in it (the process sandbox does not stop it)
        if attempt:  # what the lost attempt left (run 0 shares its directory with the proposal and later runs)
            clear(run_dir, keep=lambda name: k == 0 and (name in PROPOSAL_FILES or name.startswith("repeat-")))
        spec = run_spec(self.cfg, here, run_dir, seed=rec.seed + k, trial=rec.n, budget_s=budget_s)
        files = {f: (here / f).read_bytes() for f in self.cfg.project.editable if (here / f).is_file()}
        job = Job(id=f"{rec.n}.{k}a{attempt}s{self.session}", spec=spec, slot=slot, files=files)
        self.ledger.run_started(job.id, rec.n, k, attempt, slot)
        crashpoint.reached("run.started")
        return job

    def finished(self, rec: TrialRecord, out: RunOutcome) -> None:
        """A run's end on record, whatever it was (a lost or failed run took time and hardware too)."""
        self.ledger.run_finished(out.job, out.status or RunEnd.OK, out.values.get(self.cfg.metric.name), out.seconds,
                                 out.reason, out.hardware, out.host)
        crashpoint.reached("run.finished")
        rec.add_run(out.seconds, out.hardware)

    def drop(self, n: int) -> None:
        """Trial n never happened: its row and its run outputs go (it is proposed again, or not at all)."""
        self.ledger.delete(n)
        shutil.rmtree(self.run_dir(n), ignore_errors=True)
        self.made.clear()

    def paired_se(self, examples: list[per_example.Examples], n: int) -> float | None:
        """The standard error of the per-example difference between runs' values and trial n's (None: unpaired)."""
        mine, theirs = per_example.average(examples), self.examples(n)
        return per_example.paired_se(mine, theirs) if mine is not None and theirs is not None else None

    def spent(self, rec: TrialRecord, proposal: Proposal | None) -> None:
        """What an agent's attempt cost, on record whether its proposal is taken or refused (None: it failed before
        it had spent anything known)."""
        if proposal is not None:
            (self.run_dir(rec.n) / "agent.log").write_text(proposal.transcript)
            rec.cost_usd, rec.tokens_in, rec.tokens_out = proposal.cost_usd, proposal.tokens_in, proposal.tokens_out

    def forget_runs(self, n: int) -> None:
        """Trial n's run outputs, all of them (its runs start again); what the agent made for it stays."""
        clear(self.run_dir(n), keep=lambda name: name in PROPOSAL_FILES)
        self.made.clear()

    def run_dir(self, n: int, k: int = 0) -> Path:
        """runs/<n> (k = 0) or runs/<n>/repeat-<k>, made once: a trial asks for it a few times, and only drop()
        and forget_runs() remove one."""
        path = self.state_dir / "runs" / str(n) / (f"repeat-{k}" if k else "")
        if path not in self.made:
            path.mkdir(parents=True, exist_ok=True)
            self.made.add(path)
        return path


def clear(folder: Path, keep: Callable[[str], bool]) -> None:
    """Remove what `folder` holds except the entries whose name `keep` accepts."""
    for entry in folder.iterdir():
        if not keep(entry.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
