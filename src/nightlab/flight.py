"""A trial in flight and where it lives: its bookkeeping, the worktrees trials borrow, the agent's threads."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from nightlab.config import Config
from nightlab.executors import Job
from nightlab.ledger import TrialRecord
from nightlab.runspec import run_spec
from nightlab.workspace import Workspace


@dataclass
class Flight:
    """A trial in flight: its record, its worktree, and the bookkeeping of its runs."""

    rec: TrialRecord
    ws: Workspace | None = None
    pending: int = 0  # runs to start (the baseline starts all its noise runs at once)
    running: int = 0
    next_k: int = 0  # run index; keeps growing across rebases, so no run directory is reused
    retry: list[int] = field(default_factory=list)  # lost runs to start again
    lost: dict[int, int] = field(default_factory=dict)
    rebases: int = 0
    proposal: Future | None = None
    examples: list = field(default_factory=list)  # per_example.Examples of each successful run

    @property
    def tree(self) -> Workspace:
        """The worktree it holds; only a resumed trial still waiting for one holds none, and it is not used then."""
        assert self.ws is not None, f"trial {self.rec.n} holds no worktree"
        return self.ws


class Worktrees:
    """The worktrees trials borrow. One trial at a time uses the branch's own (as the seed does); more get
    detached ones of their own, made when first needed, so the branch moves only when a trial is kept."""

    def __init__(self, branch: Workspace, size: int) -> None:
        self.branch, self.size, self.made = branch, size, 0
        self.idle: list[Workspace] = [branch] if size == 1 else []

    def available(self) -> bool:
        return bool(self.idle) or (self.size > 1 and self.made < self.size)

    def take(self) -> Workspace | None:
        if self.idle:
            return self.idle.pop()
        if self.size > 1 and self.made < self.size:
            self.made += 1
            return self.branch.spare(self.made - 1)
        return None

    def claim(self, ws: Workspace) -> None:
        """`ws` is in use outside the pool (the baseline runs in the branch's worktree)."""
        if ws in self.idle:
            self.idle.remove(ws)

    def give_back(self, ws: Workspace | None) -> None:
        if ws is not None and (ws is not self.branch or self.size == 1):
            self.idle.append(ws)


def job_for(cfg: Config, flight: Flight, run_dir: Path, k: int, slot: int, job_id: str) -> Job:
    """Run k of the trial's commit as its worktree holds it, with the editable files by value for remote workers."""
    rec, here = flight.rec, flight.tree.dir
    spec = run_spec(cfg, here, run_dir, seed=rec.seed + k, trial=rec.n)
    files = {f: (here / f).read_bytes() for f in cfg.project.editable if (here / f).is_file()}
    return Job(id=job_id, spec=spec, slot=slot, files=files)


def in_thread(fn: Callable, *args: object) -> Future:
    """Run `fn` in a daemon thread (an agent stuck in a call must not keep nightlab from exiting)."""
    fut: Future = Future()

    def work() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # handed to the main thread, which re-raises what it does not expect
            fut.set_exception(e)

    thread = threading.Thread(target=work, daemon=True, name="nightlab-agent")
    fut.thread = thread  # type: ignore[attr-defined]
    thread.start()
    return fut


def raise_in(fut: Future, exc: type[BaseException]) -> None:
    thread = getattr(fut, "thread", None)
    if thread is not None and thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))
