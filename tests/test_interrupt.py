"""Ctrl-C during a trial's run: the harness stops without waiting for the run, takes it down, and resumes cleanly."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

from nlkit import CLI, idea, make_project, sub


def _pgrep(marker: str) -> list[int]:
    proc = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(p) for p in proc.stdout.split()]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_ctrl_c_during_a_run_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    marker = f"nlmark{uuid.uuid4().hex}"  # in the run's command line only, so pgrep finds just the run
    # Trial 1's run waits as long as NL_GATE says so: in the first session it never ends by itself, so the
    # harness stopping at all shows that it did not wait for it; the resumed session lets it through.
    hold = "LR = 0.3\nimport os, time\nwhile os.environ.get('NL_GATE') == 'closed':\n    time.sleep(0.05)"
    proj = make_project(tmp_path, config={"run": {"command": f"python train.py {marker}", "env": ["NL_GATE"]}},
                        ideas=[idea("held but better", sub("LR = 0.1", hold))], extra_env={"NL_GATE": "closed"})
    harness = subprocess.Popen([*CLI, "run", "--tag", "t", "--max-trials", "1"], cwd=proj.dir, env=proj.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # A shell that starts jobs in the background (as CI may) leaves SIGINT ignored,
                               # and Python then never raises KeyboardInterrupt: restore what a terminal gives.
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        run_log = proj.state() / "runs" / "1" / "run.log"
        _wait_for(lambda: run_log.exists() and _pgrep(marker), 30, "trial 1's run to start")
        assert harness.poll() is None
        harness.send_signal(signal.SIGINT)
        out, err = harness.communicate(timeout=120)  # a bound on a hang only: the run itself never ends
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
    assert harness.returncode == 130, f"{out}{err}\nledger: {proj.ledger()}\nrun dirs: {sorted(p.name for p in (proj.state() / 'runs').iterdir())}"
    assert "interrupted" in err and "Traceback" not in err
    _wait_for(lambda: not _pgrep(marker), 30, "the run to be gone")  # no orphan left holding the GPU
    interrupted = proj.ledger()
    assert [r["n"] for r in interrupted] == [0, 1]
    assert interrupted[1]["status"] == "running" and interrupted[1]["commit_sha"]

    proj.extra_env["NL_GATE"] = "open"
    proj.run("--max-trials", "1")
    ledger = proj.ledger()
    assert [r["n"] for r in ledger] == [0, 1]  # trial 1 recorded once, not twice
    assert [r["status"] for r in ledger] == ["baseline", "keep"]
    assert ledger[1]["description"] == "held but better"
    assert ledger[1]["metric"] is not None and len(ledger[1]["runs"]) == 1  # the re-run went all the way through
    subjects = proj.git("log", "--format=%s", "nightlab/t").splitlines()
    assert subjects.count("trial 1: held but better") == 1
    assert proj.git("rev-parse", "refs/nightlab/t/trial-1") == ledger[1]["commit_sha"] == proj.git("rev-parse",
                                                                                                   "nightlab/t")
    assert "status: keep" in proj.git("log", "-1", "--format=%B", "nightlab/t")
    assert not list((proj.state() / "runs" / "1").glob("repeat-*"))
    rows = (proj.state() / "results.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[3] for r in rows] == ["baseline", "keep"]
    assert not _pgrep(marker)
