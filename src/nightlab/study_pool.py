"""A study's sessions side by side (`nightlab study --parallel N`).

Each session runs in a process of its own, as `nightlab run --tag <its tag>` would: its own worktree, branch, ledger
and tag lock, its own executor, the same compute budget as run one after another (seconds of its own runs). Only
the study's process writes study.json, as each session's outcome comes back. On a local executor whose runs take
GPUs (`gpus_per_trial`), the sessions in flight get disjoint GPUs (a lane each), so none trains on another's.
Stopping the study (Ctrl-C, SIGTERM) stops every session cleanly; if it is killed outright, its sessions get
SIGTERM from the kernel. A rerun resumes them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import cast

from nightlab.config import Config
from nightlab.errors import NightlabError, UsageError
from nightlab.executors import gpu_ids
from nightlab.study import Arm, Outcome, Study, arm_config
from nightlab.workspace import ignore_state_dir

STOP_WAIT_S = 120.0  # how long a stopped session may take to wind down before it is killed


def gpu_lanes(cfg: Config, configs: list[Config], parallel: int) -> list[str | None]:
    """Each lane's `[sandbox] gpus`: disjoint GPUs when a session's runs take GPUs on a local executor, else None
    (nothing to split: CPU runs, or a cluster that places the runs itself)."""
    local = [c for c in configs if c.executor.name == "local" and c.executor.gpus_per_trial]
    if not local:
        return [None] * parallel
    width = max(c.executor.slots * c.executor.gpus_per_trial for c in local)
    ids = gpu_ids(cfg.sandbox.gpus)
    if parallel * width > len(ids):
        raise UsageError(f"--parallel {parallel}: {parallel} sessions × {width} GPUs each (slots × gpus_per_trial) "
                         f"need {parallel * width} GPUs, but {len(ids)} are available "
                         f"({', '.join(ids) or 'none found'})")
    return [",".join(ids[i * width:(i + 1) * width]) for i in range(parallel)]


def run_parallel(study: Study, todo: list[tuple[Arm, int]], parallel: int) -> None:
    """Run `todo`'s sessions, at most `parallel` at once, in order; record each outcome as it arrives."""
    lanes = gpu_lanes(study.cfg, [arm_config(study.cfg, arm, r) for arm, r in todo], parallel)
    ignore_state_dir(study.cfg.root)  # before the sessions: none of them then rewrites info/exclude beside another
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds threads, locks and a ledger
    todo, free = list(todo), list(range(parallel))
    running: dict[Connection, tuple[BaseProcess, Arm, int, int]] = {}
    try:
        while todo or running:
            while todo and free:
                arm, r = todo.pop(0)
                lane = free.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                child = ctx.Process(target=_session, args=(study, arm, r, lanes[lane], os.getpid(), send),
                                    name=study.tag(arm, r))
                child.start()
                send.close()
                running[receive] = (child, arm, r, lane)
            for ready in wait(list(running)):
                conn = cast(Connection, ready)
                proc, arm, r, lane = running.pop(conn)
                result = _receive(conn)
                proc.join()
                free.append(lane)
                if not isinstance(result, Outcome):
                    raise NightlabError(f"{study.tag(arm, r)}: {result or f'stopped (exit code {proc.exitcode})'}")
                study.record((arm.name, r), result)
    finally:
        _stop([proc for proc, *_ in running.values()])


def _receive(conn: Connection) -> object:
    try:
        return conn.recv()
    except EOFError:  # it died without a word
        return None
    finally:
        conn.close()


def _stop(procs: list[BaseProcess]) -> None:
    for proc in procs:
        proc.terminate()  # SIGTERM: the session stops as from Ctrl-C, its ledger consistent
    for proc in procs:
        proc.join(STOP_WAIT_S)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _session(study: Study, arm: Arm, r: int, gpus: str | None, parent: int, conn: Connection) -> None:
    """A session's process: its outcome, or the one line of a known failure, goes back through `conn`."""
    from nightlab.sandbox.process import die_with_parent

    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # the study died before this process could ask to die with it
        return
    tag, say = study.tag(arm, r), study.say
    study.say = lambda line: say(f"{tag}: {line.strip()}")  # lines of sessions side by side say whose they are
    try:
        conn.send(study.session(arm, r, gpus))
    except NightlabError as e:
        conn.send(str(e))
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()
