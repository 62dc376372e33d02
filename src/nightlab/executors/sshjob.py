"""The host's side of the SSH executor: one run, its job read from stdin, its outcome and run directory to stdout.

Run as `python -m nightlab.executors.sshjob BASE` over ssh, where BASE is the project's files as the driver
last synced them. The job arrives as a length-prefixed pickle; the candidate is materialised from BASE and
the job's editable files in a private temp dir (executors/transfer.py), run by `execute()` as a local slot
runs it, and `("ok", outcome, files)` goes back on stdout (anything else the run's code prints goes to
stderr). stdin stays open while the run lasts: its end means the connection dropped or the driver
cancelled the run, and the run is stopped at once (no one could receive its result).
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import struct
import sys
import threading
import traceback
from pathlib import Path

from nightlab.executors import execute
from nightlab.executors.batchjob import TERMINATED, Terminated
from nightlab.executors.transfer import collect, job_dir, on_worker
from nightlab.sandbox import load_sandbox


def read_exactly(f, n: int) -> bytes:  # noqa: ANN001  (a binary stream)
    data = b""
    while len(data) < n:
        chunk = f.read(n - len(data))
        if not chunk:
            raise EOFError("the connection closed before the job arrived")
        data += chunk
    return data


def run_here(base: Path, payload: bytes) -> tuple:
    cfg, sandbox, job = pickle.loads(payload)
    cfg = cfg.model_copy(update={"path": base / "nightlab.toml"})  # the project is BASE here
    where = job_dir()
    try:
        job = on_worker(cfg, job, where)
        return ("ok", execute(cfg, load_sandbox(sandbox), job), collect(job.spec.run_dir))
    finally:
        shutil.rmtree(where, ignore_errors=True)


def main(base: Path) -> int:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what anything else prints must not mix with the result
    size = struct.unpack(">Q", read_exactly(sys.stdin.buffer, 8))[0]
    payload = read_exactly(sys.stdin.buffer, size)

    def on_term(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    def watch_stdin() -> None:
        sys.stdin.buffer.read()  # returns at the connection's end
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        result: tuple = run_here(base, payload)
    except Terminated:
        return TERMINATED
    except Exception as e:  # a bug, or this host cannot run it (no sandbox here): the driver raises it
        result = ("error", e, traceback.format_exc())
    try:
        data = pickle.dumps(result)
    except Exception:
        data = pickle.dumps(("error", RuntimeError(result[-1]), result[-1]))
    out.write(data)
    out.flush()
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--version":  # the driver's check that nightlab is there
        from nightlab import __version__

        print(__version__)
        sys.exit(0)
    sys.exit(main(Path(sys.argv[1])))
