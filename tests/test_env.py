"""What a run sees: its environment, its interpreter, its working directory and the data it may read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nlkit import idea, make_project, one_line_error, sub

ENV_TRAIN = '''import json
import os
import sys
from pathlib import Path

# knobs
LR = 0.1
out = Path(os.environ["NIGHTLAB_RUN_DIR"]) / "env.json"
out.write_text(json.dumps({"env": dict(os.environ), "executable": sys.executable, "cwd": os.getcwd()}))
print(f"val_loss: {1.0 + LR}")
print("peak_memory_gb: 0.1")
'''
CALLER = {"MY_SECRET_API_KEY": "x", "SOME_VAR": "y", "ANTHROPIC_API_KEY": "sk-test", "OPENAI_API_KEY": "sk-test",
          "GITHUB_TOKEN": "ghp-test"}


def _env_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "env.json").read_text())


def test_the_run_environment(tmp_path: Path) -> None:
    proj = make_project(tmp_path, train=ENV_TRAIN, extra_env=CALLER,
                        ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.2"))])
    proj.run("--max-trials", "1")
    runs = proj.state() / "runs"
    for n, run_dir in ((0, runs / "0"), (1, runs / "1")):
        seen = _env_of(run_dir)
        env = seen["env"]
        assert Path(env["NIGHTLAB_RUN_DIR"]).resolve() == run_dir.resolve()
        assert env["NIGHTLAB_BUDGET_S"] == "1"
        assert env["NIGHTLAB_SEED"] == str(1000 * n)
        assert env["NIGHTLAB_TRIAL"] == str(n)
        for name in CALLER:  # nothing from the caller's environment, API keys least of all
            assert name not in env, name
        assert "x" not in env.values() and "sk-test" not in env.values()
        assert seen["executable"] == sys.executable  # `python` is the harness's own interpreter
        assert Path(seen["cwd"]).resolve() == proj.worktree().resolve()  # cwd = the candidate's worktree
        assert env["HOME"] != str(proj.home)  # not even the caller's HOME


def test_listed_variables_pass_through(tmp_path: Path) -> None:
    proj = make_project(tmp_path, train=ENV_TRAIN, extra_env=CALLER, config={"run": {"env": ["SOME_VAR", "UNSET_VAR"]}})
    proj.run("--max-trials", "0")
    env = _env_of(proj.state() / "runs" / "0")["env"]
    assert env["SOME_VAR"] == "y"
    assert "UNSET_VAR" not in env  # listed but not set in the caller: simply absent
    assert "MY_SECRET_API_KEY" not in env


@pytest.mark.parametrize("name", ["MY_SECRET_API_KEY", "OPENAI_API_KEY", "GITHUB_TOKEN", "DB_PASSWORD", "hf_token"])
def test_listing_a_secret_is_refused(tmp_path: Path, name: str) -> None:
    proj = make_project(tmp_path, train=ENV_TRAIN, extra_env=CALLER, config={"run": {"env": ["SOME_VAR", name]}})
    line = one_line_error(proj.run("--max-trials", "0", ok=False))
    assert name in line
    assert not (proj.state() / "runs" / "0" / "env.json").exists()  # nothing ran


@pytest.mark.parametrize("command", ["python train.py", "python3 train.py"])
def test_python_is_the_harness_interpreter(tmp_path: Path, command: str) -> None:
    proj = make_project(tmp_path, train=ENV_TRAIN, config={"run": {"command": command}})
    proj.run("--max-trials", "0")
    assert _env_of(proj.state() / "runs" / "0")["executable"] == sys.executable


def test_trial_command_gets_the_same_clean_environment(tmp_path: Path) -> None:
    proj = make_project(tmp_path, train=ENV_TRAIN, extra_env=CALLER)
    proc = proj.nl("trial", "--record")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = list((proj.dir / ".nightlab" / "manual").iterdir())
    env = _env_of(run_dir)["env"]
    assert env["NIGHTLAB_RUN_DIR"] and "NIGHTLAB_SEED" in env
    for name in CALLER:
        assert name not in env


# -- data visibility --------------------------------------------------------------------------------------
DATA_TRAIN = '''import os
from pathlib import Path

# knobs
LR = 0.1
print(f"train_lines: {len(Path('data/train.txt').read_text().splitlines())}")
print(f"val_files: {len(os.listdir('data/val'))}")
print(f"test_visible: {int(os.path.exists('data/test.txt'))}")
print(f"val_loss: {1.0 + LR}")
print("peak_memory_gb: 0.1")
'''


def _data_project(tmp_path: Path, ignored: bool = True):
    config = {"data": {"train": ["data/train.txt"], "val": ["data/val"], "test": ["data/test.txt"]}}
    proj = make_project(tmp_path, train=DATA_TRAIN, config=config,
                        files={} if ignored else {".gitignore": ""},
                        ideas=[idea("lower LR", sub("LR = 0.1", "LR = 0.05")),
                               idea("lower LR more", sub("LR = 0.05", "LR = 0.0"))])
    proj.write("data/train.txt", "a\nb\nc\n")
    proj.write("data/val/1.txt", "1")
    proj.write("data/val/2.txt", "2")
    proj.write("data/test.txt", "secret labels\n")
    return proj


def test_train_and_val_data_are_visible_and_test_data_is_not(tmp_path: Path) -> None:
    proj = _data_project(tmp_path)
    proj.run("--max-trials", "2")
    ledger = proj.ledger()
    assert [r["status"] for r in ledger] == ["baseline", "keep", "keep"]
    for r in ledger:  # every trial, not just the baseline, sees the data at the same relative path
        assert r["metrics"]["train_lines"] == 3
        assert r["metrics"]["val_files"] == 2
        assert r["metrics"]["test_visible"] == 0
    wt = proj.worktree()
    assert (wt / "data" / "train.txt").read_text() == "a\nb\nc\n"
    assert not (wt / "data" / "test.txt").exists()
    assert (proj.dir / "data" / "test.txt").read_text() == "secret labels\n"  # the project's own copy is intact
    assert (proj.dir / "data" / "train.txt").read_text() == "a\nb\nc\n"


def test_data_that_is_not_git_ignored_is_not_an_edit(tmp_path: Path) -> None:
    proj = _data_project(tmp_path, ignored=False)
    proj.run("--max-trials", "1")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"], proj.trial(1)["reason"]


def test_data_that_is_not_git_ignored_is_never_deleted(tmp_path: Path) -> None:
    """Whatever the harness does with the links in its worktree, the project's own data survives."""
    proj = _data_project(tmp_path, ignored=False)
    proj.run("--max-trials", "2")
    assert (proj.dir / "data" / "train.txt").read_text() == "a\nb\nc\n"
    assert sorted(p.name for p in (proj.dir / "data" / "val").iterdir()) == ["1.txt", "2.txt"]
    assert (proj.dir / "data" / "test.txt").read_text() == "secret labels\n"
