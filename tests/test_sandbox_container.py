"""The docker and podman backends: their command lines; podman for real (runtime choice, doctor, the loop, verify).

The red-team attacks under podman are in redteam/test_container.py. No docker daemon runs on these
machines, so docker is checked through its command line only.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nightlab.sandbox import seccomp
from nightlab.sandbox.container import BACKSTOP_S, container_argv
from nightlab.sandbox.probe import probe_engine
from nightlab.sandbox.runtime import Runtime, attempt, choose, installed, probe
from nightlab.types import RunSpec
from nlkit import CLI, TRAIN, idea, isolated_env, make_project, one_line_error, sub


def _spec(tmp_path: Path, **kw) -> RunSpec:
    for d in ("wt", "run", "data"):
        (tmp_path / d).mkdir(exist_ok=True)
    (tmp_path / "wt" / "test.txt").write_text("labels")
    return RunSpec(command="python train.py --fast", cwd=tmp_path / "wt", run_dir=tmp_path / "run", budget_s=1,
                   timeout_s=5, seed=3, trial=2, env={"SOME_VAR": "y"}, readonly=[tmp_path / "data"],
                   masked=[tmp_path / "wt" / "test.txt"], memory_gb=4, max_pids=256, image="my/env:1", **kw)


def _flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_container_command_isolates_like_bwrap(tmp_path: Path, engine: str) -> None:
    argv = container_argv(engine, _spec(tmp_path, gpus="none", max_run_dir_mb=8), "nightlab-x", uid=1000, gid=1000,
                          runtime=Runtime("runc", ("nofile=1024:1024",)))
    head = [engine, "--runtime", "runc", "run"] if engine == "podman" else [engine, "run"]  # podman: a global flag
    assert argv[:len(head)] == head
    assert _flag_values(argv, "--runtime") == ["runc"]  # docker takes it after `run`
    assert _flag_values(argv, "--network") == ["none"] and "--read-only" in argv
    assert _flag_values(argv, "--cap-drop") == ["ALL"]
    security = _flag_values(argv, "--security-opt")
    assert security[0] == "no-new-privileges"
    if engine == "podman":  # its own profile less new namespaces, where the engine ships one (Debian's does)
        assert security[1:] == ([f"seccomp={seccomp.profile_path()}"] if seccomp.profile_path() else [])
        assert _flag_values(argv, "--timeout") == [str(5 + 5 + BACKSTOP_S)]  # timeout + grace: should nightlab die
    assert _flag_values(argv, "--ulimit") == ["nofile=1024:1024", f"fsize={8 << 20}:{8 << 20}"]
    assert _flag_values(argv, "--user") == ["1000:1000"]
    assert _flag_values(argv, "--memory") == ["4096m"] and _flag_values(argv, "--memory-swap") == ["4096m"]
    assert _flag_values(argv, "--pids-limit") == ["256"]
    volumes = _flag_values(argv, "--volume")
    run, wt, data = (str((tmp_path / d).resolve()) for d in ("run", "wt", "data"))
    assert f"{wt}:{wt}:ro" in volumes and f"{data}:{data}:ro" in volumes and f"{run}:{run}:rw" in volumes
    assert f"/dev/null:{tmp_path / 'wt' / 'test.txt'}:ro" in volumes  # the test split, masked
    assert [v for v in volumes if v.endswith(":rw")] == [f"{run}:{run}:rw"]
    env = _flag_values(argv, "--env")
    assert "NIGHTLAB_SEED=3" in env and "SOME_VAR=y" in env and not any(e.startswith("PATH=") for e in env)
    assert _flag_values(argv, "--workdir") == [str(tmp_path / "wt")]
    assert argv[-4:] == ["my/env:1", "python", "train.py", "--fast"]  # the image's python, not the host's
    assert "--gpus" not in argv and "--device" not in argv


def test_gpus_docker_flag_and_podman_cdi(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidiactl").touch()  # a machine with the NVIDIA driver

    def argv(engine: str, gpus: str) -> list[str]:
        return container_argv(engine, _spec(tmp_path, gpus=gpus), "n", dev=dev)

    assert _flag_values(argv("docker", "all"), "--gpus") == ["all"]
    assert _flag_values(argv("docker", "0,1"), "--gpus") == ["device=0,1"]
    assert _flag_values(argv("podman", "all"), "--device") == ["nvidia.com/gpu=all"]
    assert _flag_values(argv("podman", "1"), "--device") == ["nvidia.com/gpu=1"]
    # without the driver (this machine), asking for GPUs gives none, as under bwrap, instead of failing the run
    no_gpu = container_argv("podman", _spec(tmp_path, gpus="all"), "n", dev=tmp_path / "empty")
    assert "--device" not in no_gpu and "--gpus" not in container_argv("docker", _spec(tmp_path, gpus="all"), "n",
                                                                       dev=tmp_path / "empty")


def test_shell_syntax_goes_through_sh(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    spec.command = "python train.py | tee out.txt"
    assert container_argv("docker", spec, "n")[-3:] == ["/bin/sh", "-c", "python train.py | tee out.txt"]


def test_choosing_an_engine_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    proj = make_project(tmp_path)
    for engine in ("docker", "podman"):
        if probe_engine(engine)[0]:
            continue
        line = one_line_error(proj.nl("trial", "--sandbox", engine))
        assert engine in line


def test_podman_picks_the_first_runtime_that_works_and_says_why_the_others_failed(podman_image: str) -> None:
    chosen = choose("podman")
    order = installed("podman")  # the engine's default first (crun, where `apt-get install podman` brings it)
    assert order.index(chosen.name) == len(chosen.tried) and list(chosen.tried) == order[:len(chosen.tried)]
    assert probe("podman", chosen.name, chosen.ulimits)[0]
    for name, why in chosen.tried.items():  # here: crun, "cgroups in hybrid mode not supported"
        assert why and attempt("podman", name)[0] is None, name


def test_doctor_reports_the_engine_and_each_runtime(tmp_path: Path, podman_image: str) -> None:
    proc = subprocess.run([*CLI, "doctor"], cwd=tmp_path, env=isolated_env(tmp_path / "home"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert lines["podman"].split()[0] == "ok" and "podman" in lines["podman"]
    runtime = lines["podman-runtime"]
    chosen = choose("podman")
    assert runtime.split()[0] == "ok" and f"{chosen.name} works" in runtime
    for name in chosen.tried:
        assert f"{name} fails: " in runtime


SPLIT_TRAIN = TRAIN.replace('print("step 1/1: done")', '''\
print("step 1/1: done")
print(f"saw_test: {int(os.path.exists('data/test.txt'))}")''')


def test_the_loop_and_verify_run_under_podman(tmp_path: Path, podman_image: str) -> None:
    cfg = {"sandbox": {"image": podman_image, "memory_gb": 1, "max_pids": 256}, "keep": {"noise_runs": 2, "confirm": 0},
           "data": {"test": ["data/test.txt"]}}
    proj = make_project(tmp_path, train=SPLIT_TRAIN, config=cfg, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))],
                        extra_env={"ANTHROPIC_API_KEY": "sk-ant-not-for-runs"})
    proj.write("data/test.txt", "0.25\n")
    proj.run("--sandbox", "podman", "--max-trials", "1", timeout=300)
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]
    assert proj.trial(1)["metric"] == pytest.approx(1.0) and proj.trial(0)["metric"] == pytest.approx(1.04)
    assert all(r["metrics"]["saw_test"] == 0 for r in proj.ledger())
    for n in (0, 1):
        record = json.loads((proj.state() / "runs" / str(n) / "sandbox.json").read_text())
        assert record["backend"] == "podman" and record["engine"] == "podman" and record["exit_reason"] == ""
        assert record["runtime"] == choose("podman").name and record["network"] == "none"
        assert record["image"] == podman_image and "sk-ant" not in json.dumps(record)

    # verify's fresh seeds run in the same sandbox, chosen in the config this time
    proj.config({**cfg, "sandbox": {**cfg["sandbox"], "backend": "podman"}})
    proc = proj.nl("verify", "--tag", "t", "--seeds", "2", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = proj.rows("SELECT * FROM verify")
    assert row["n"] == row["n_ref"] == 2 and row["effect"] == pytest.approx(0.04)
    records = list((proj.state() / "verify" / "1").glob("*/*/sandbox.json"))
    assert len(records) == 4 and {json.loads(p.read_text())["engine"] for p in records} == {"podman"}
