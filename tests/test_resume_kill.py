"""A real `nightlab run` killed with SIGKILL mid-trial resumes with no lost and no duplicated trial."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from prockit import Watch, wait_for

MARKER = "nightlab-kill9-marker"

TRAIN = f"""\
import os, time
LR = 0.1
# {MARKER}
time.sleep(1.5)
print("val_loss:", round(abs(LR - 1.0) + int(os.environ["NIGHTLAB_SEED"]) * 1e-9, 9))
"""

CONFIG = """\
[project]
editable = ["train.py"]
protected = []
[run]
command = "python train.py"
budget_s = 5
timeout_s = 30
[metric]
name = "val_loss"
[keep]
noise_runs = 1
[agent]
name = "scripted"
"""


def ideas(n: int) -> str:
    out = []
    for i in range(1, n + 1):
        old, new = f"LR = {i / 10:.1f}", f"LR = {(i + 1) / 10:.1f}"
        out.append(f'[[idea]]\ndescription = "{old} -> {new}"\n[[idea.edit]]\nfile = "train.py"\n'
                   f'search = "{old}"\nreplace = "{new}"\n')
    return "\n".join(out)


def nightlab(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from nightlab.cli import main; main()", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def rows(db: Path) -> list[tuple]:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT n, status, commit_sha, runs FROM trials ORDER BY n").fetchall()
    except sqlite3.OperationalError:  # polled while the harness is still creating the schema
        return []


def marker_pids() -> list[str]:
    out = subprocess.run(["pgrep", "-f", "train.py"], capture_output=True, text=True).stdout.split()
    return [p for p in out if MARKER in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
            or _cwd_has_marker(p)]


def _cwd_has_marker(pid: str) -> bool:
    try:
        return MARKER in (Path(os.readlink(f"/proc/{pid}/cwd")) / "train.py").read_text()
    except OSError:
        return False


def test_kill_9_mid_trial_then_resume(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "train.py").write_text(TRAIN)
    (proj / "nightlab.toml").write_text(CONFIG)
    (proj / "ideas.toml").write_text(ideas(4))
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    subprocess.run(["git", "add", "-A"], cwd=proj, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=proj, check=True)
    db = proj / ".nightlab" / "k" / "ledger.sqlite"

    proc = nightlab("run", "--tag", "k", "--max-trials", "4", cwd=proj)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until trial 2 is committed and its run has started
        if db.exists() and any(r[0] == 2 and r[1] == "running" and r[2] for r in rows(db)) \
                and (proj / ".nightlab/k/runs/2/run.log").exists():
            break
        time.sleep(0.05)
    else:
        proc.kill()
        raise AssertionError(f"trial 2 never started: {proc.communicate()[0]}")
    training = Watch([int(p) for p in wait_for(marker_pids, what="trial 2's training process")])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert [r[:2] for r in rows(db)][-1] == (2, "running")

    # the run dies with its parent (PR_SET_PDEATHSIG), not after its sleep
    assert training.survivors(timeout=30) == [], "a training process outlived the killed harness"
    training.close()
    assert marker_pids() == []

    resumed = nightlab("run", "--tag", "k", "--max-trials", "4", cwd=proj)
    out = resumed.communicate(timeout=120)[0]
    assert resumed.returncode == 0, out

    final = rows(db)
    assert [r[0] for r in final] == [0, 1, 2, 3, 4]  # nothing lost, nothing duplicated
    assert [r[1] for r in final] == ["baseline", "keep", "keep", "keep", "keep"]
    assert all(len(eval(r[3])) == 1 for r in final)  # trial 2 counted once: one run recorded
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname:short)", "refs/nightlab/k/"], cwd=proj,
                          capture_output=True, text=True, check=True).stdout.split()
    assert sorted(refs) == [f"nightlab/k/trial-{i}" for i in range(5)]
    tip = subprocess.run(["git", "rev-parse", "nightlab/k"], cwd=proj, capture_output=True, text=True).stdout.strip()
    assert tip == final[-1][2]
    shown = subprocess.run(["git", "show", "nightlab/k:train.py"], cwd=proj, capture_output=True, text=True).stdout
    assert "LR = 0.5" in shown
    # the idea re-run after the kill is the same idea (the queue position was not skipped)
    log = subprocess.run(["git", "log", "--format=%s", "nightlab/k"], cwd=proj, capture_output=True, text=True).stdout
    assert log.splitlines()[:4] == [f"trial {i}: LR = {i / 10:.1f} -> LR = {(i + 1) / 10:.1f}" for i in (4, 3, 2, 1)]
