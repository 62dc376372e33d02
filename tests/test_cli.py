"""The CLI contract: exit codes, one-line errors, refusals, `nightlab trial`, `nightlab init`."""

from __future__ import annotations

import fcntl
import json
import re
import subprocess
from pathlib import Path

import pytest

from nightlab import config as nl_config
from nlkit import (BASE_CONFIG, CLI, ROOT, TRAIN, Project, idea, isolated_env, make_project, merged, one_line_error,
                   sub, toml_dumps)


def _bare(tmp_path: Path, toml: str | None) -> Project:
    """A directory (not even a git repo) holding only a nightlab.toml: config errors come before anything else."""
    proj = Project(tmp_path / "proj", tmp_path / "home")
    proj.dir.mkdir(parents=True)
    if toml is not None:
        proj.write("nightlab.toml", toml)
    return proj


# -- bad config -----------------------------------------------------------------------------------------------
BAD_CONFIGS = {
    "unknown key": (merged(BASE_CONFIG, {"run": {"bogus_key": 1}}), ["bogus_key", "unknown key"]),
    "unknown section": (merged(BASE_CONFIG, {"nonsense": {"a": 1}}), ["nonsense", "unknown key"]),
    "wrong type": (merged(BASE_CONFIG, {"run": {"budget_s": "fast"}}), ["budget_s"]),
    "list expected": (merged(BASE_CONFIG, {"project": {"editable": "train.py"}}), ["editable"]),
    "out of range": (merged(BASE_CONFIG, {"keep": {"noise_runs": 0}}), ["noise_runs"]),
    "bad goal": (merged(BASE_CONFIG, {"metric": {"goal": "smaller"}}), ["goal"]),
    "bad constraint": (merged(BASE_CONFIG, {"metric": {"constraints": [{"name": "m", "maximum": 1}]}}),
                       ["constraints", "maximum"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    data, words = BAD_CONFIGS[case]
    proj = _bare(tmp_path, toml_dumps(data))
    line = one_line_error(proj.nl("run"))
    assert "nightlab.toml" in line  # names the file...
    for word in words:  # ...and the key
        assert word in line


@pytest.mark.parametrize("command", ["status", "log", "trial", "prepare"])
def test_every_command_checks_the_config(tmp_path: Path, command: str) -> None:
    proj = _bare(tmp_path, toml_dumps(BAD_CONFIGS["unknown key"][0]))
    line = one_line_error(proj.nl(command))
    assert "nightlab.toml" in line and "bogus_key" in line


def test_invalid_toml(tmp_path: Path) -> None:
    proj = _bare(tmp_path, "[run\ncommand = 'python train.py'\n")
    line = one_line_error(proj.nl("run"))
    assert "nightlab.toml" in line and "TOML" in line


def test_missing_config(tmp_path: Path) -> None:
    proj = _bare(tmp_path, None)
    line = one_line_error(proj.nl("run"))
    assert "nightlab.toml" in line
    line = one_line_error(proj.nl("run", "--config", str(tmp_path / "elsewhere.toml")))
    assert "elsewhere.toml" in line


def test_config_flag_works_from_another_directory(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    proc = proj.nl("run", "--tag", "t", "--max-trials", "1", "--config", str(proj.dir / "nightlab.toml"),
                   cwd=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]


# -- bad flags ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["run", "--bogus"], ["--bogus"]),
    (["run", "--max-trials", "-1"], ["--max-trials"]),
    (["run", "--max-trials", "many"], ["--max-trials"]),
    (["run", "--hours", "-1"], ["--hours"]),
    (["run", "--tag", "bad tag!"], ["--tag"]),
    (["nosuchcommand"], ["nosuchcommand"]),
    (["status", "--json", "--json-extra"], ["--json-extra"]),
    (["init", "--goal", "sideways"], ["--goal"]),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path, args: list[str], words: list[str]) -> None:
    proj = _bare(tmp_path, toml_dumps(BASE_CONFIG))
    line = one_line_error(proj.nl(*args))
    for word in words:
        assert word in line


def test_unknown_agent_name(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    line = one_line_error(proj.run("--agent", "no-such-agent", "--max-trials", "1", ok=False))
    assert "no-such-agent" in line and "agent" in line
    # the refused start leaves nothing in the way of a correct one
    proj.run("--max-trials", "1")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]


def test_unknown_sandbox_name(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    line = one_line_error(proj.run("--sandbox", "no-such-sandbox", ok=False))
    assert "sandbox" in line and "process" in line  # says which setting and what is allowed


@pytest.mark.parametrize("args, flag", [(["--budget", "0"], "--budget"), (["--sandbox", "nope"], "--sandbox")])
def test_a_bad_flag_value_names_the_flag_that_was_given(tmp_path: Path, args: list[str], flag: str) -> None:
    proj = _bare(tmp_path, toml_dumps(BASE_CONFIG))
    line = one_line_error(proj.nl("run", *args))
    assert f"{flag}:" in line or f"{flag} " in line


def test_a_budget_flag_overrides_the_config(tmp_path: Path) -> None:
    train = TRAIN.replace('print("step 1/1: done")', 'print("budget_s:", os.environ["NIGHTLAB_BUDGET_S"])')
    proj = make_project(tmp_path, train=train, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    proj.run("--max-trials", "0", "--budget", "7")
    assert proj.trial(0)["metrics"]["budget_s"] == 7.0


# -- refusals: dirty tree, changed identity -----------------------------------------------------------------
def test_a_dirty_tree_is_refused(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    proj.write("train.py", TRAIN.replace("LR = 0.1", "LR = 0.2"))
    line = one_line_error(proj.run("--max-trials", "1", ok=False))
    assert "uncommitted" in line and "commit or stash" in line
    assert proj.git("branch", "--list", "nightlab/*") == ""  # nothing was created
    assert (proj.dir / "train.py").read_text() == TRAIN.replace("LR = 0.1", "LR = 0.2")  # nor touched


@pytest.mark.parametrize("staged", [False, True], ids=["modified", "staged"])
def test_the_dirty_tree_message_names_the_file(tmp_path: Path, staged: bool) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    proj.write("train.py", TRAIN.replace("LR = 0.1", "LR = 0.2"))
    if staged:
        proj.git("add", "train.py")
    proj.write("prepare.py", "print('changed')\n")
    line = one_line_error(proj.run("--max-trials", "1", ok=False))
    assert "(prepare.py, train.py)" in line or "(train.py, prepare.py)" in line


@pytest.mark.parametrize("change, word", [
    ({"metric": {"name": "val_other"}}, "metric"),
    ({"metric": {"goal": "maximize"}}, "goal"),
    ({"project": {"editable": ["train.py", "prepare.py"]}}, "editable"),
])
def test_resuming_with_a_changed_metric_goal_or_editable_is_refused(tmp_path: Path, change: dict, word: str) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    proj.run("--max-trials", "0")
    original = (proj.dir / "nightlab.toml").read_text()
    proj.config(change)
    line = one_line_error(proj.run("--max-trials", "1", ok=False))
    assert word in line and "changed" in line
    assert [r["n"] for r in proj.ledger()] == [0]
    # restoring the setting resumes normally
    proj.write("nightlab.toml", original)
    proj.run("--max-trials", "1")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]


def test_a_second_run_on_a_busy_tag_is_refused(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])
    proj.state().mkdir(parents=True)
    with open(proj.state() / "lock", "w") as f:  # another process holds the tag
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = one_line_error(proj.run("--max-trials", "1", ok=False))
    assert "another" in line and "'t'" in line


# -- nightlab trial ---------------------------------------------------------------------------------------------
def test_trial_prints_the_metric_and_records_nothing(tmp_path: Path) -> None:
    proj = make_project(tmp_path)
    proc = proj.nl("trial")
    assert proc.returncode == 0, proc.stderr
    assert "val_loss: 1.04" in proc.stdout
    assert "peak_memory_gb: 0.1" in proc.stdout
    assert not (proj.dir / ".nightlab").exists()
    assert proj.git("status", "--porcelain", "--untracked-files=all") == "?? ideas.toml"  # as before the run


def test_trial_runs_the_working_tree_as_it_is(tmp_path: Path) -> None:
    proj = make_project(tmp_path)
    proj.write("train.py", TRAIN.replace("LR = 0.1", "LR = 0.3"))  # uncommitted
    proc = proj.nl("trial")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\s*val_loss: 1 ←$", proc.stdout, re.MULTILINE), proc.stdout


def test_trial_record_keeps_the_outputs(tmp_path: Path) -> None:
    proj = make_project(tmp_path)
    proc = proj.nl("trial", "--record")
    assert proc.returncode == 0, proc.stderr
    runs = list((proj.dir / ".nightlab" / "manual").iterdir())
    assert len(runs) == 1
    assert "val_loss: 1.040000" in (runs[0] / "run.log").read_text()
    assert json.loads((runs[0] / "metrics.json").read_text())["val_loss"] == pytest.approx(1.04)


@pytest.mark.parametrize("command", [["trial", "--record"], ["prepare"]])
def test_state_written_before_any_run_is_hidden_from_git_status(tmp_path: Path, command: list[str]) -> None:
    proj = make_project(tmp_path, config={"run": {"prepare": "python prepare.py"}})
    proc = proj.nl(*command)
    assert proc.returncode == 0, proc.stderr
    assert (proj.dir / ".nightlab").is_dir()
    assert ".nightlab" not in proj.git("status", "--porcelain", "--untracked-files=all")


@pytest.mark.parametrize("edit, word", [
    (("seed = int", "raise SystemExit(4)\nseed = int"), "crash"),
    (('print(f"val_loss: {loss:.6f}")', 'print("nothing")'), "metric missing"),
    (("MEMORY = 0.1", "MEMORY = 3.0"), "invalid"),
])
def test_trial_exits_1_when_the_run_fails(tmp_path: Path, edit: tuple[str, str], word: str) -> None:
    proj = make_project(tmp_path)
    proj.write("train.py", TRAIN.replace(*edit))
    proc = proj.nl("trial")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert word in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (proj.dir / ".nightlab").exists()


# -- nightlab init ------------------------------------------------------------------------------------------------
def test_init_writes_a_config_with_the_flags_values(tmp_path: Path) -> None:
    proj = _bare(tmp_path, None)
    proj.write("train.py", TRAIN)
    proj.write("model.py", "W = 1\n")
    proj.write("prepare.py", "print('p')\n")
    proc = proj.nl("init", str(proj.dir), "--metric", "accuracy", "--goal", "maximize", "--command",
                   "python train.py --fast", "--budget", "42", "--editable", "train.py", "--editable", "model.py")
    assert proc.returncode == 0, proc.stderr
    cfg = nl_config.load(proj.dir / "nightlab.toml")
    assert cfg.metric.name == "accuracy"
    assert cfg.metric.goal == "maximize"
    assert cfg.run.command == "python train.py --fast"
    assert cfg.run.budget_s == 42
    assert cfg.run.timeout_s > cfg.run.budget_s
    assert cfg.project.editable == ["train.py", "model.py"]
    assert cfg.project.protected == ["prepare.py"]
    assert (proj.dir / "program.md").is_file()

    line = one_line_error(proj.nl("init", str(proj.dir)))  # never overwrites
    assert "already exists" in line
    assert nl_config.load(proj.dir / "nightlab.toml").metric.name == "accuracy"


def test_init_defaults_in_the_current_directory(tmp_path: Path) -> None:
    proj = _bare(tmp_path, None)
    proj.write("train.py", TRAIN)
    proc = proj.nl("init")
    assert proc.returncode == 0, proc.stderr
    cfg = nl_config.load(proj.dir / "nightlab.toml")
    assert (cfg.metric.name, cfg.metric.goal, cfg.project.editable) == ("val_bpb", "minimize", ["train.py"])
    assert cfg.run.command == "python train.py"


def test_init_refuses_an_editable_file_that_does_not_exist(tmp_path: Path) -> None:
    proj = _bare(tmp_path, None)
    line = one_line_error(proj.nl("init", str(proj.dir), "--editable", "missing.py"))
    assert "missing.py" in line
    assert not (proj.dir / "nightlab.toml").exists()


def test_init_example_makes_a_git_repo_with_one_commit(tmp_path: Path) -> None:
    if not (ROOT / "examples" / "quickstart" / "nightlab.toml").is_file():
        pytest.skip("examples/quickstart/nightlab.toml does not exist yet")
    dest = tmp_path / "qs"
    env = isolated_env(tmp_path / "home")
    proc = subprocess.run([*CLI, "init", str(dest), "--example", "quickstart"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "nightlab.toml").is_file() and (dest / "train.py").is_file()
    count = subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=dest, env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert count == "1"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=dest, env=env, capture_output=True, text=True,
                            check=True).stdout
    assert status == ""
    line = one_line_error(subprocess.run([*CLI, "init", str(dest), "--example", "quickstart"], cwd=tmp_path, env=env,
                                         capture_output=True, text=True, timeout=60))
    assert "not empty" in line


def test_init_unknown_example(tmp_path: Path) -> None:
    proj = _bare(tmp_path, None)
    line = one_line_error(proj.nl("init", str(tmp_path / "x"), "--example", "no-such-example"))
    assert "no-such-example" in line


def test_help_for_every_command(tmp_path: Path) -> None:
    proj = _bare(tmp_path, None)
    for command in ("init", "prepare", "run", "trial", "status", "log"):
        proc = proj.nl(command, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout, command
    run_help = proj.nl("run", "--help").stdout
    for flag in ("--tag", "--agent", "--max-trials", "--hours", "--budget", "--sandbox"):
        assert flag in run_help


@pytest.mark.parametrize("text", ["plain", "tab\there", ":thumbs_up: as an emoji code", "[bold]brackets[/] kept",
                                  "a bell\x07 and \x1b[31mescapes", "wide 漢字 é", "back\\slash", "x" * 300, "cr\rlf"])
def test_a_run_line_piped_is_what_rich_would_print(monkeypatch, text: str) -> None:
    """`nightlab run` writes its lines itself when they go to a pipe or a file (rich's rendering costs more than the
    rest of a fast trial's printing): the bytes must be rich's own."""
    import io

    from rich.console import Console
    from rich.markup import escape

    from nightlab import cli

    line = f"trial   3  [green]keep    [/]  0.99 (-0.01)   {escape(text)} [dim]{escape('[a reason]')}[/]"
    rich_said, we_said = io.StringIO(), io.StringIO()
    Console(file=rich_said, highlight=False, soft_wrap=True).print(line)
    monkeypatch.setattr(cli, "console", Console(file=we_said, highlight=False, soft_wrap=True))
    cli._say(line)
    assert we_said.getvalue() == rich_said.getvalue() and "keep" in we_said.getvalue()
