"""The report drawn in a process of its own, beside `nightlab run`.

Drawing the report (matplotlib, every trial's diff read again) takes a few hundred milliseconds a time and
grows with the trials. In a thread of the harness it held the interpreter lock while the next trial was being
prepared, and it left the harness's memory as high as the largest report; here it runs at a lower priority on
another core, and the harness only waits on a pipe. The process is started once (its imports are paid once),
takes one request a line, draws each in a fork of itself, ignores Ctrl-C (the run writes the last report after
one) and dies with the harness.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from nightlab.config import Config
from nightlab.errors import NightlabError
from nightlab.sandbox.process import die_with_parent

NICE = 10  # the report may wait; the next trial may not


class ReportProcess:
    """`write()` has the worker rewrite report.html and the charts; it returns the note on a missing chart."""

    def __init__(self, cfg: Config, tag: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "nightlab.report.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True,
                                     preexec_fn=die_with_parent)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        path = str(cfg.path) if cfg.path else None
        self._send({"config": cfg.model_dump(mode="json"), "path": path, "tag": tag, "cwd": os.getcwd()})

    def _send(self, request: dict) -> None:
        self.stdin.write(json.dumps(request) + "\n")
        self.stdin.flush()

    def write(self) -> str:
        self._send({"write": True})
        line = self.stdout.readline()
        if not line:
            raise NightlabError(f"the report process ended (exit code {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise NightlabError(reply["error"])
        return reply["note"]

    def close(self) -> None:
        try:
            self.stdin.close()
        except OSError:  # it died already
            pass
        self.proc.wait()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICE)
    try:  # what drawing the chart needs, imported once here, before the forks (the extra may be missing)
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:
        pass
    setup = json.loads(sys.stdin.readline())
    os.chdir(setup["cwd"])  # where a config without a path has its project
    cfg = Config.model_validate(setup["config"])
    cfg.path = Path(setup["path"]) if setup["path"] else None
    for _ in sys.stdin:  # one line a request; the harness closing the pipe ends it
        sys.stdout.write(_forked(cfg, setup["tag"]) + "\n")
        sys.stdout.flush()


def _forked(cfg: Config, tag: str) -> str:
    """Draw the report in a fork that exits after it: what a big report needs is given back to the system each
    time (Python keeps the memory it once used), so neither process grows over a long night."""
    from nightlab.report import write_report

    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: draw, answer, leave without running the parent's clean-ups
        die_with_parent()  # as its parent dies with nightlab (a fork does not inherit that)
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)
        os.close(r)
        try:
            reply = {"note": write_report(cfg, tag)[1]}
        except Exception as e:  # noqa: BLE001 - reported to the harness, which logs it and goes on
            reply = {"error": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(reply).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as answer:
        said = answer.read().decode()
    _, status = os.waitpid(pid, 0)
    return said or json.dumps({"error": f"the report's drawing process ended with status {status}"})


if __name__ == "__main__":
    main()
