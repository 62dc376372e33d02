"""nightlab killed with -9 at a precise point resumes with the same command: a half-made first start, a resumed
trial's proposal files, git's lock files, a half-made verify worktree, run cgroups, optuna's asked points."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from chaoskit import finish, killed, locks, nightlab, resumed, start, worktree_troubles
from nlkit import content, idea, make_project, sub

IMPROVE = [idea("LR 0.1 -> 0.3", sub("LR = 0.1", "LR = 0.3")), idea("BONUS up", sub("BONUS = 0.0", "BONUS = 0.5"))]


def ledger_rows(proj, tag: str = "t") -> list[tuple]:
    return [(r["n"], r["status"]) for r in proj.ledger(tag)]


# -- A: the first start -------------------------------------------------------------------------------------
@pytest.mark.parametrize("point", ["worktree add#1", "worktree add#1:inside"])
def test_a_first_start_killed_after_the_branch_starts_again(tmp_path: Path, point: str) -> None:
    proj = make_project(tmp_path, ideas=IMPROVE)
    checkout = proj.git("status", "--porcelain"), proj.git("rev-parse", "HEAD")
    killed(proj, tmp_path / "chaos", "run", "--tag", "t", "--max-trials", "1", git_at=point)
    assert proj.git("branch", "--list", "nightlab/t")  # what the issue found: the branch, and no ledger
    assert not (proj.state() / "ledger.sqlite").exists()
    if point.endswith(":inside"):
        assert any("initializing" in p.read_text() for p in (proj.dir / ".git/worktrees").glob("*/locked"))

    out = resumed(proj, "run", "--tag", "t", "--max-trials", "1")
    assert "never started fully" in out
    assert ledger_rows(proj) == [(0, "baseline"), (1, "keep")]
    assert worktree_troubles(proj) == [] and locks(proj) == []
    assert not (proj.state() / "creating").exists()
    assert (proj.git("status", "--porcelain"), proj.git("rev-parse", "HEAD")) == checkout  # the user's, untouched


def test_a_a_branch_the_user_made_is_still_refused(tmp_path: Path) -> None:
    proj = make_project(tmp_path)
    proj.git("branch", "nightlab/t")
    proc = proj.run("--max-trials", "0", ok=False)
    assert proc.returncode == 2 and "already exists but tag 't' has no ledger" in proc.stderr


# -- B: a resumed trial keeps its proposal ------------------------------------------------------------------
# git.amend.written: where `git commit-tree` was, trial 1's record (nightlab writes its commits itself: gitcommit.py)
@pytest.mark.parametrize("point", [{"crash_at": "git.amend.written#1"}, {"crash_at": "run.finished#2"}])
def test_b_a_resumed_trial_keeps_its_brief_transcript_and_diff(tmp_path: Path, point: dict) -> None:
    proj = make_project(tmp_path, ideas=IMPROVE)
    killed(proj, tmp_path / "chaos", "run", "--tag", "t", "--max-trials", "2", **point)
    assert (1, "running") in ledger_rows(proj)
    run1 = proj.state() / "runs" / "1"
    proposal = {f: (run1 / f).read_text() for f in ("brief.md", "agent.log", "diff.patch")}
    assert "LR = 0.3" in proposal["diff.patch"]

    resumed(proj, "run", "--tag", "t", "--max-trials", "2")
    assert ledger_rows(proj) == [(0, "baseline"), (1, "keep"), (2, "keep")]
    assert {f: (run1 / f).read_text() for f in proposal} == proposal  # kept as the agent left them
    assert "val_loss" in (run1 / "run.log").read_text()  # the run itself was redone
    assert proj.trial(1)["runs"] == [pytest.approx(1.0)]  # counted once


# -- C: git's lock files ------------------------------------------------------------------------------------
# trial 1's record moving the branch to its kept commit (nightlab resets as git does: gitworktree.py): with
# index.lock written (git.reset.indexed#3, after the baseline's two resets), then with HEAD's and the branch's locks
# held (git.reset.locked#1: the first reset that moves the branch; a trial's commit moves none, gitcommit.py).
# nightlab's own ref updates hold git's locks too: git.mark.locked#2 is trial 1's ref (after the baseline's).
@pytest.mark.parametrize("point", [{"crash_at": "git.reset.indexed#3"}, {"crash_at": "git.reset.locked#1"},
                                   {"crash_at": "git.mark.locked#2"}])
def test_c_killed_while_git_holds_a_lock(tmp_path: Path, point: dict) -> None:
    proj = make_project(tmp_path, ideas=IMPROVE)
    killed(proj, tmp_path / "chaos", "run", "--tag", "t", "--max-trials", "2", **point)
    assert locks(proj), "the kill left no lock"

    resumed(proj, "run", "--tag", "t", "--max-trials", "2")
    assert ledger_rows(proj) == [(0, "baseline"), (1, "keep"), (2, "keep")]
    assert locks(proj) == [] and worktree_troubles(proj) == []
    assert proj.git("rev-parse", "nightlab/t") == proj.trial(2)["commit_sha"]
    assert proj.git("fsck", "--no-dangling") == ""


def test_c_a_lock_git_still_holds_is_left_alone(tmp_path: Path) -> None:
    """While a git process works in the repository a lock may be its own: nightlab does not take it away."""
    proj = make_project(tmp_path)
    proj.run("--max-trials", "0")
    lock = proj.dir / ".git" / "refs" / "nightlab" / "t" / "trial-7.lock"
    lock.write_text("")
    # a git process of the user's, sitting in the repository while nightlab starts
    user = subprocess.Popen(["git", "cat-file", "--batch"], cwd=proj.dir, stdin=subprocess.PIPE, env=proj.env)
    try:
        proj.run("--max-trials", "0")
        assert lock.exists()
    finally:
        user.stdin.close()
        user.wait(timeout=30)


# -- D: verify's worktree -----------------------------------------------------------------------------------
def kept_tag(tmp_path: Path):
    proj = make_project(tmp_path, ideas=IMPROVE[:1])
    proj.run("--max-trials", "1")
    assert ledger_rows(proj) == [(0, "baseline"), (1, "keep")]
    return proj


def test_d_verify_killed_while_git_makes_its_worktree(tmp_path: Path) -> None:
    proj = kept_tag(tmp_path)
    killed(proj, tmp_path / "chaos", "verify", "--tag", "t", "--seeds", "2", git_at="worktree add#1:inside")
    assert worktree_troubles(proj)  # locked "initializing", as the kill left it

    resumed(proj, "verify", "--tag", "t", "--seeds", "2")
    assert worktree_troubles(proj) == [] and locks(proj) == []
    assert len(proj.rows("SELECT * FROM verify WHERE kind = 'val'")) == 1


def test_d_a_worktree_without_commondir_breaks_no_later_command(tmp_path: Path) -> None:
    """What a kill while git writes `commondir` leaves (git writes `locked`, `gitdir`, a null HEAD, then
    `commondir`): every git command that lists worktrees fails until it is gone."""
    proj = kept_tag(tmp_path)
    admin = proj.dir / ".git" / "worktrees" / "verify"
    admin.mkdir()
    tree = proj.state() / "trials" / "verify"
    tree.mkdir(parents=True)
    (admin / "locked").write_text("initializing")
    (admin / "gitdir").write_text(f"{tree}/.git\n")
    (tree / ".git").write_text(f"gitdir: {admin}\n")
    (admin / "HEAD").write_text("0" * 40 + "\n")
    (admin / "commondir").write_text("")
    assert proj.git("branch", check=False) == ""  # broken, as the issue says

    resumed(proj, "run", "--tag", "other", "--max-trials", "0")  # another tag mends it
    assert "nightlab/other" in proj.git("branch")
    resumed(proj, "verify", "--tag", "t", "--seeds", "2")
    assert worktree_troubles(proj) == []


# -- E: run cgroups -----------------------------------------------------------------------------------------
HOLD = """import os, pathlib, time
(pathlib.Path(os.environ["NIGHTLAB_RUN_DIR"]) / "started").write_text("yes")
while os.path.exists("hold"):  # the test removes it; until then the run is in flight
    time.sleep(0.05)
print("val_loss: 1.0")
print("peak_memory_gb: 0.1")
"""


def run_cgroups(pid: int) -> list[Path]:
    found = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else ["unified"]:
            found += (Path("/sys/fs/cgroup") / c / path.lstrip("/")).glob(f"nightlab-{pid}-*")
    return found


def test_e_the_cgroups_of_a_killed_bwrap_run_are_removed_at_the_next_start(tmp_path: Path) -> None:
    proj = make_project(tmp_path, train=HOLD, config={"sandbox": {"backend": "bwrap", "memory_gb": 1}})
    (proj.dir / "hold").write_text("")
    proc = start(proj, "trial", "--record", env=proj.env)
    deadline = time.monotonic() + 120
    while not list((proj.dir / ".nightlab" / "manual").glob("*/started")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.02)
    groups = run_cgroups(proc.pid)
    if not groups:
        os.killpg(proc.pid, signal.SIGKILL)
        finish(proc)
        pytest.skip("no writable cgroup on this machine: bwrap runs are limited by rlimits")
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    deadline = time.monotonic() + 30
    while any(procs(g) for g in groups):  # the run dies with its harness
        assert time.monotonic() < deadline, "a sandboxed run outlived its harness"
        time.sleep(0.02)
    if not all(g.is_dir() for g in groups):  # any nightlab starting on this machine sweeps dead runs' groups
        pytest.skip("another nightlab on this machine removed the groups before this test's start could")

    (proj.dir / "hold").unlink()
    code, out = nightlab(proj, "trial", env=proj.env)
    assert code == 0, out
    assert not any(g.exists() for g in groups)


def procs(group: Path) -> str:
    """The processes in a cgroup ("" once it is empty or gone)."""
    try:
        return (group / "cgroup.procs").read_text().strip()
    except FileNotFoundError:
        return ""


# -- F: optuna's asked points -------------------------------------------------------------------------------
def running_points(proj) -> list[int]:
    db = sqlite3.connect(proj.state() / "optuna.sqlite")
    try:
        return [r[0] for r in db.execute("SELECT number FROM trials WHERE state = 'RUNNING'")]
    finally:
        db.close()


OPTUNA = {"agent": {"name": "optuna", "seed": 3}}


def test_f_a_point_asked_but_never_recorded_is_not_left_running(tmp_path: Path) -> None:
    proj = make_project(tmp_path, config=OPTUNA)
    killed(proj, tmp_path / "chaos", "run", "--tag", "t", "--max-trials", "2", crash_at="optuna.asked#1")
    assert running_points(proj), "the kill left no asked point"

    resumed(proj, "run", "--tag", "t", "--max-trials", "2")
    assert [n for n, _ in ledger_rows(proj)] == [0, 1, 2]
    assert running_points(proj) == []


def test_f_an_orphan_point_from_before_the_fix_is_failed(tmp_path: Path) -> None:
    """A study a killed nightlab left with an asked point (no nightlab trial tagged on it)."""
    optuna = pytest.importorskip("optuna")
    proj = make_project(tmp_path, config=OPTUNA)
    proj.run("--max-trials", "1")
    study = optuna.load_study(study_name="nightlab", storage=f"sqlite:///{proj.state() / 'optuna.sqlite'}")
    study.ask()
    assert running_points(proj)

    proj.run("--max-trials", "2")
    assert running_points(proj) == []
    states = json.loads(proj.nl("log", "--tag", "t", "--json").stdout)
    assert [t["n"] for t in states] == [0, 1, 2]


# -- a clean run for comparison: nothing to mend, nothing said ----------------------------------------------
def test_an_undisturbed_run_mends_nothing(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[idea("notes", content("n\n", "scratchpad.md"), sub("LR = 0.1", "LR = 0.2"))])
    proc = proj.run("--max-trials", "1")
    assert "stale" not in proc.stderr and "half-made" not in proc.stderr and "never started" not in proc.stderr
