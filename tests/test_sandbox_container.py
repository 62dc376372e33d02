"""The docker and podman backends: their command lines here; a real run only where an engine answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nightlab.sandbox.container import container_argv
from nightlab.sandbox.probe import probe_engine
from nightlab.types import RunSpec
from nlkit import make_project, one_line_error


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
    argv = container_argv(engine, _spec(tmp_path, gpus="none"), "nightlab-x", uid=1000, gid=1000)
    assert argv[:2] == [engine, "run"]
    assert _flag_values(argv, "--network") == ["none"] and "--read-only" in argv
    assert _flag_values(argv, "--cap-drop") == ["ALL"]
    assert _flag_values(argv, "--security-opt") == ["no-new-privileges"]
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
    assert _flag_values(container_argv("docker", _spec(tmp_path, gpus="all"), "n"), "--gpus") == ["all"]
    assert _flag_values(container_argv("docker", _spec(tmp_path, gpus="0,1"), "n"), "--gpus") == ["device=0,1"]
    assert _flag_values(container_argv("podman", _spec(tmp_path, gpus="all"), "n"), "--device") == ["nvidia.com/gpu=all"]
    assert _flag_values(container_argv("podman", _spec(tmp_path, gpus="1"), "n"), "--device") == ["nvidia.com/gpu=1"]


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


ENGINES = [e for e in ("docker", "podman") if probe_engine(e)[0]]


@pytest.mark.skipif(not ENGINES, reason="no docker or podman engine answers on this machine (a client alone does not count)")
@pytest.mark.parametrize("engine", ENGINES or ["none"])
def test_a_real_container_run(tmp_path: Path, engine: str) -> None:
    train = ("import os, socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    net = 1\n"
             "except OSError:\n    net = 0\nprint(f'net: {net}')\nprint('val_loss: 1.0')\nprint('peak_memory_gb: 0.1')\n")
    proj = make_project(tmp_path, train=train, config={"sandbox": {"backend": engine, "image": "python:3.11-slim"}})
    proc = proj.nl("trial", "--record", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "net: 0" in proc.stdout
    (run_dir,) = (proj.dir / ".nightlab" / "manual").iterdir()
    assert json.loads((run_dir / "sandbox.json").read_text())["engine"] == engine
