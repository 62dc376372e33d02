"""The records that flow through the loop: statuses, metrics, proposals, run specs and results."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class Status(StrEnum):
    """A trial's state in the ledger: RUNNING while in flight, then how it ended."""

    RUNNING = "running"
    BASELINE = "baseline"
    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    TIMEOUT = "timeout"
    REJECTED = "rejected"  # the agent changed a file it may not, or changed nothing
    INVALID = "invalid"  # a protected file changed, or a constraint was violated
    LOST = "lost"  # the infrastructure killed it; retried, never charged to the agent
    HELD = "held"  # a win the audit found suspicious, with [audit] on_suspicious = "hold": not built upon until
    #                a person accepts it (then keep) or rejects it (then discard)


class RunEnd(StrEnum):
    """How a single run (a row of the ledger's runs table) ended when no failing Status says it."""

    OK = "ok"
    INTERRUPTED = "interrupted"  # nightlab stopped while it ran


class Event(StrEnum):
    """What the loop tells its `notify(event, rec)` callback about trial `rec`."""

    PROPOSE = "propose"  # the agent is asked for it
    RUN = "run"  # its first run starts
    CONFIRM = "confirm"  # promising but uncertain: it runs again with a fresh seed
    LOST = "lost"  # the infrastructure lost one of its runs, which runs again
    REBASE = "rebase"  # the best moved on: its change was re-applied there and runs again from scratch
    DONE = "done"  # finished and recorded


@dataclass(frozen=True)
class Metric:
    """The primary metric's name and direction; comparisons read 'better', not 'larger'."""

    name: str
    goal: str = "minimize"  # or "maximize"

    def improvement(self, value: float, best: float) -> float:
        """How much `value` beats `best`: positive when better, whatever the goal."""
        return best - value if self.goal == "minimize" else value - best

    def better(self, value: float, best: float | None) -> bool:
        return best is None or self.improvement(value, best) > 0

    def best_of(self, values: list[float]) -> float | None:
        return (min if self.goal == "minimize" else max)(values) if values else None


@dataclass
class Proposal:
    """What an agent returns after editing the workspace for one trial."""

    description: str
    hypothesis: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    transcript: str = ""  # the agent's log, saved as agent.log
    params: dict = field(default_factory=dict)  # e.g. the values an optimizer chose


@dataclass
class Brief:
    """What the agent is told for one trial (also saved as brief.md)."""

    trial: int
    text: str
    editable: list[str]
    metric: Metric
    best: float | None
    noise: float | None
    phase: str = ""


@dataclass
class RunSpec:
    """One sandboxed execution of a command."""

    command: str
    cwd: Path
    run_dir: Path
    budget_s: float
    timeout_s: float
    seed: int
    trial: int
    env: dict[str, str] = field(default_factory=dict)  # extra variables, already filtered
    log_name: str = "run.log"
    grace_s: float = 5.0
    # What an isolating backend shows and limits (see runspec.py); the process backend ignores them.
    readonly: list[Path] = field(default_factory=list)  # readable besides cwd, e.g. the targets of data links
    hidden: list[Path] = field(default_factory=list)  # invisible (the project and its state), before re-binds
    masked: list[Path] = field(default_factory=list)  # invisible even inside cwd or readonly (the test split)
    memory_gb: float | None = None
    gpus: str = ""  # "all", "none"/"", or indices "0,1"
    max_pids: int = 0  # 0 = no limit
    max_log_mb: float = 0
    max_run_dir_mb: float = 0
    image: str = ""  # docker/podman only
    runtime: str = ""  # docker/podman: the OCI runtime ("" = one that works here)


@dataclass
class RunResult:
    """How a run ended. Metrics are read from the run's outputs afterwards (see metrics.py)."""

    exit_code: int | None
    seconds: float
    timed_out: bool
    log_path: Path
    reason: str = ""
    details: dict = field(default_factory=dict)  # backend specifics (mounts, limits), merged into sandbox.json

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass
class RunOutcome:
    """What an executor returns for one run of a trial: plain data, so it travels back from a remote worker."""

    job: str  # the Job id it answers (results are deduplicated by it)
    values: dict[str, float] = field(default_factory=dict)  # the metrics that counted; empty when it failed
    examples: Any = None  # per_example.Examples of the primary metric, when the run reported them
    seconds: float = 0.0  # time spent running (training and the evaluator)
    status: Status | None = None  # None when it succeeded; else how it failed (LOST: the infrastructure's fault)
    reason: str = ""
    slot: int = 0
    host: str = ""
    hardware: str = ""  # "cpu", or the GPU model(s) the run had: fixed-time results depend on it
    started: float = 0.0  # wall clock (time.time())
    finished: float = 0.0


def is_finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
