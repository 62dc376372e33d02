"""The Slurm executor against a real single-node Slurm cluster started for this module (tests/slurmkit.py).

The contract every executor keeps is in test_executors.py (its `slurm` half); these are Slurm's own promises:
`nightlab run --executor slurm` end to end, a job cancelled from outside is lost and run again, a killed
nightlab's jobs are cancelled by the next session before it submits its own, a broken setup line is one
clear error, and nightlab's environment (API keys) never reaches a job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from nightlab.config import load
from nightlab.executors import Job, load_executor
from nightlab.executors.slurm import job_suffix
from nightlab.runspec import run_spec
from nightlab.views import queued
from nlkit import (
    CLI,
    PARALLEL_TRAIN,
    TRAIN,
    check_consistent,
    idea,
    make_project,
    one_line_error,
    parallel_project,
    sub,
)
from prockit import running, wait_for
from slurmkit import SlurmCluster, slurm_fixture

FAST = {"executor.slurm": {"poll_s": 0.5}}


@pytest.fixture(scope="module")
def slurm() -> SlurmCluster:
    yield from slurm_fixture()


def ours(cluster: SlurmCluster, proj, trial: int | None = None) -> dict[str, tuple[str, str]]:
    """The jobs of the project's tag t that Slurm still knows (of trial `trial`): id → (name, state)."""
    part, end = f"nightlab.t.{trial}." if trial is not None else "nightlab.t.", job_suffix(proj.state())
    return {i: (n, s) for i, (n, s) in cluster.jobs().items() if n.startswith(part) and n.endswith(end)}


@pytest.mark.slow
def test_nightlab_run_on_slurm_with_two_slots_records_every_trial_once(tmp_path: Path, slurm: SlurmCluster) -> None:
    ideas = [idea("lr 0.2", sub("LR = 0.1", "LR = 0.2")), idea("bonus", sub("BONUS = 0.0", "BONUS = 0.05")),
             idea("slower", sub("SLEEP = 0.4", "SLEEP = 0.6")), idea("reword", sub("# another", "# one more"))]
    proj = parallel_project(tmp_path, *ideas, config={"sandbox": {"backend": "bwrap"}, **FAST})
    proj.run("--executor", "slurm", "--slots", "2", "--max-trials", "4", timeout=240)
    rows = check_consistent(proj)
    assert [r["n"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(r["status"] in ("baseline", "keep", "discard") for r in rows), [r["reason"] for r in rows]
    done = [r for r in proj.runs() if r["trial"] > 0]
    assert {r["status"] for r in done} == {"ok"} and {r["slot"] for r in done} == {0, 1}
    assert set(one_job_per_run(slurm, proj).values()) == {"COMPLETED"}
    assert all((proj.state() / "runs" / str(n) / "run.log").is_file() for n in range(5))
    assert queued(proj.state()) == {} and list((proj.state() / "slurm").iterdir()) == []


def one_job_per_run(cluster: SlurmCluster, proj) -> dict[str, str]:
    """Each run in the ledger was exactly one Slurm job (none requeued, none twice): run's job id → the job's state."""
    jobs = ours(cluster, proj)
    names = sorted(n for n, _ in jobs.values())
    assert names == sorted(f"nightlab.t.{r['job']}{job_suffix(proj.state())}" for r in proj.runs()), names
    return {n.split(".", 2)[2].rsplit(".", 1)[0]: s for n, s in jobs.values()}


def held_project(tmp_path: Path, hold: Path, *ideas: dict):
    """A project whose runs wait while `hold` exists, its baseline already run (so only trials hold)."""
    proj = parallel_project(tmp_path, *ideas, train=PARALLEL_TRAIN.replace('HOLD = ""', f'HOLD = "{hold}"'),
                            config=FAST)
    proj.run("--executor", "slurm", "--max-trials", "0", timeout=120)
    hold.touch()
    return proj


def running_job(cluster: SlurmCluster, proj, trial: int) -> str:
    """The id of trial `trial`'s job once its training process has started."""
    def find() -> str | None:
        jobs = [i for i, (_, s) in ours(cluster, proj, trial).items() if s == "RUNNING"]
        return jobs[0] if jobs and (proj.state() / "runs" / str(trial) / "pid").is_file() else None

    return wait_for(find, timeout=120, what=f"trial {trial}'s Slurm job to run")


@pytest.mark.slow
def test_a_job_cancelled_with_scancel_is_lost_and_its_run_retried(tmp_path: Path, slurm: SlurmCluster) -> None:
    hold = tmp_path / "hold"
    proj = held_project(tmp_path, hold, idea("lr 0.3", sub("LR = 0.1", "LR = 0.3")))
    nl = subprocess.Popen([*CLI, "run", "--tag", "t", "--executor", "slurm", "--max-trials", "1"], cwd=proj.dir,
                          env=proj.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = running_job(slurm, proj, 1)

        def shown() -> bool:  # `nightlab status` says where the run is
            slot = json.loads(proj.nl("status", "--json").stdout)["slots"][0]
            return slot["trial"] == 1 and slot["queue"] == {"where": f"Slurm job {first}", "state": "RUNNING"}

        wait_for(shown, timeout=60, what="nightlab status to show the Slurm job")
        assert f"Slurm job {first} RUNNING" in proj.nl("status", env={**proj.env, "COLUMNS": "200"}).stdout
        slurm.run("scancel", first)  # as an administrator, or a preemption, would
        wait_for(lambda: slurm.jobs()[first][1] == "CANCELLED", timeout=60, what="the job to be cancelled")
        hold.unlink()
        assert nl.wait(timeout=180) == 0, nl.stderr.read() if nl.stderr else ""
    finally:
        if nl.poll() is None:
            nl.kill()
    rows = check_consistent(proj)
    assert [(r["n"], r["status"]) for r in rows] == [(0, "baseline"), (1, "keep")]
    runs = [r for r in proj.runs() if r["trial"] == 1]
    assert [(r["attempt"], r["status"]) for r in runs] == [(0, "lost"), (1, "ok")]
    assert runs[0]["reason"] == f"Slurm job {first} was cancelled"
    assert sorted(one_job_per_run(slurm, proj).values()) == ["CANCELLED", "COMPLETED", "COMPLETED"]


@pytest.mark.slow
def test_a_killed_nightlabs_jobs_are_cancelled_before_the_resume_submits_its_own(tmp_path: Path,
                                                                                  slurm: SlurmCluster) -> None:
    hold = tmp_path / "hold"
    proj = held_project(tmp_path, hold, idea("lr 0.2", sub("LR = 0.1", "LR = 0.2")),
                        idea("bonus", sub("BONUS = 0.0", "BONUS = 0.05")))
    args = [*CLI, "run", "--tag", "t", "--executor", "slurm", "--slots", "2", "--max-trials", "2"]
    first = subprocess.Popen(args, cwd=proj.dir, env=proj.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    old = {running_job(slurm, proj, 1), running_job(slurm, proj, 2)}
    trainers = [int((proj.state() / "runs" / str(n) / "pid").read_text()) for n in (1, 2)]
    first.kill()  # SIGKILL: nightlab cancels nothing
    first.wait()
    assert {i for i, (_, s) in ours(slurm, proj).items() if s == "RUNNING"} == old  # Slurm runs them on regardless
    resume = subprocess.Popen(args, cwd=proj.dir, env=proj.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        # The old jobs still hold, so only the resume's scancel can end them.
        wait_for(lambda: all(slurm.jobs()[i][1] == "CANCELLED" for i in old), timeout=120,
                 what="the resume to cancel the killed session's jobs")
        wait_for(lambda: not any(running(p) for p in trainers), timeout=30, what="their runs to end")
        hold.unlink()
        assert resume.wait(timeout=180) == 0, resume.stderr.read() if resume.stderr else ""
    finally:
        if resume.poll() is None:
            resume.kill()
    rows = check_consistent(proj)
    assert [(r["n"], r["status"] in ("keep", "discard")) for r in rows[1:]] == [(1, True), (2, True)]
    states = one_job_per_run(slurm, proj)  # the killed session's cancelled, the others completed
    assert sorted(s for job, s in states.items() if job.startswith(("1.", "2."))).count("CANCELLED") == 2
    assert {ours(slurm, proj)[i][1] for i in old} == {"CANCELLED"}
    assert {s for i, (_, s) in ours(slurm, proj).items() if i not in old} == {"COMPLETED"}


def test_a_setup_line_that_fails_is_one_clear_error(tmp_path: Path, slurm: SlurmCluster) -> None:
    proj = make_project(tmp_path, config={"executor.slurm": {"poll_s": 0.5, "setup": "module load cuda/99"}})
    line = one_line_error(proj.run("--executor", "slurm", "--max-trials", "0", ok=False, timeout=120))
    assert "before nightlab started in it" in line and "module" in line and "[executor.slurm] setup" in line


def test_nightlabs_environment_never_reaches_a_job(tmp_path: Path, slurm: SlurmCluster,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The process backend: the run can read its parent's (nightlab's job side) environment.
    peek = ('parent = open(f"/proc/{os.getppid()}/environ", "rb").read()\n'
            'print("leaked" if b"sk-test-secret" in parent else "clean",\n'
            '      "slurm" if b"SLURM_JOB_ID" in parent else "")\n')
    proj = make_project(tmp_path, train=TRAIN.replace("seed = int", peek + "seed = int"))
    cfg = load(proj.dir / "nightlab.toml")
    cfg.executor.slurm.poll_s = 0.5
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-secret")
    ex = load_executor("slurm", cfg, "process", 1, state=tmp_path / "state")
    try:
        run_dir = tmp_path / "run"
        spec = run_spec(cfg, proj.dir, run_dir, seed=0, trial=1)
        out = ex.submit(Job(id="1.0a0s1", spec=spec)).result(timeout=120)
    finally:
        ex.shutdown()
    assert out.status is None, out.reason
    assert "clean slurm" in (run_dir / "run.log").read_text()
    assert os.environ["ANTHROPIC_API_KEY"] == "sk-test-secret"


def test_doctor_probes_the_cluster_with_the_projects_settings(tmp_path: Path, slurm: SlurmCluster) -> None:
    proj = make_project(tmp_path, config={"executor": {"name": "slurm"}})
    proc = proj.nl("doctor", timeout=300, env={**proj.env, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert "executor slurm" in proc.stdout.splitlines()
    assert lines["sbatch"].split()[0] == "ok" and "debug*" in lines["cluster"]
    assert lines["probe-job"].split()[0] == "ok" and "ran on" in lines["probe-job"]
    assert lines["shared-files"].split()[0] == "ok" and str(proj.dir) in lines["shared-files"]
    assert lines["node-sandbox"].split()[0] == "ok" and "auto picks bwrap" in lines["node-sandbox"]
    assert "nvidia-smi lists none" in lines["node-gpus"]  # the test cluster's GPUs are device files only
    assert "internet" in lines["node-network"]
    assert not list((proj.dir / ".nightlab" / "doctor").iterdir())  # the probe's files are gone


def test_settings_slurm_refuses_are_one_clear_error(tmp_path: Path, slurm: SlurmCluster) -> None:
    proj = make_project(tmp_path, config={"executor.slurm": {"partition": "nope"}})
    line = one_line_error(proj.run("--executor", "slurm", "--max-trials", "0", ok=False, timeout=120))
    assert "sbatch failed" in line and "invalid partition" in line.lower() and "[executor.slurm]" in line


def test_the_jobs_ask_slurm_for_what_the_config_says(tmp_path: Path, slurm: SlurmCluster) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    proj = make_project(tmp_path, train=PARALLEL_TRAIN.replace('HOLD = ""', f'HOLD = "{hold}"'))
    cfg = load(proj.dir / "nightlab.toml")
    cfg.executor.gpus_per_trial = 1
    cfg.executor.slurm = cfg.executor.slurm.model_copy(update={
        "partition": "debug", "time_limit_min": 7, "cpus": 2, "memory_gb": 0.5, "sbatch": ["--comment=nl-extra"],
        "setup": "export NL_SETUP=done", "poll_s": 0.5})
    ex = load_executor("slurm", cfg, "process", 1, state=tmp_path / "state")
    try:
        future = ex.submit(Job(id="1.0a0s1", spec=run_spec(cfg, proj.dir, tmp_path / "run", seed=0, trial=1)))
        job = wait_for(lambda: next(iter(slurm.active("nightlab.")), None), timeout=60, what="the job")
        shown = slurm.run("scontrol", "show", "job", job)
        for field in ("Partition=debug", "TimeLimit=00:07:00", "NumCPUs=2", "mem=512M", "Comment=nl-extra",
                      "Requeue=0", "TresPerJob=gres:gpu:1"):
            assert field in shown, (field, shown)
        script = (tmp_path / "state" / "slurm" / "1.0a0s1" / "job.sh").read_text()
        assert "#SBATCH --comment=nl-extra" in script and "export NL_SETUP=done" in script
        hold.unlink()
        out = future.result(timeout=120)
    finally:
        ex.shutdown()
    assert out.status is None, out.reason
    assert "gpus: " in (tmp_path / "run" / "run.log").read_text()  # one of the node's GPUs, by Slurm's index
    assert (tmp_path / "run" / "run.log").read_text().split("gpus: ")[1].split()[0] in {"0", "1", "2", "3"}


@pytest.mark.slow
def test_nightlab_stopped_with_sigterm_cancels_its_jobs(tmp_path: Path, slurm: SlurmCluster) -> None:
    hold = tmp_path / "hold"
    proj = held_project(tmp_path, hold, idea("lr 0.2", sub("LR = 0.1", "LR = 0.2")))
    nl = subprocess.Popen([*CLI, "run", "--tag", "t", "--executor", "slurm", "--max-trials", "1"], cwd=proj.dir,
                          env=proj.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        job = running_job(slurm, proj, 1)
        nl.send_signal(signal.SIGTERM)
        nl.wait(timeout=120)
    finally:
        if nl.poll() is None:
            nl.kill()
    assert slurm.jobs()[job][1] == "CANCELLED"  # cancelled before nightlab exited
    assert proj.trial(1)["status"] == "running"  # and left to a resume, as a Ctrl-C leaves it
