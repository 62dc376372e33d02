"""nightlab.toml in-process: each bad setting is one line naming the file and the key, paths are normalized,
plug-ins are a known name or module:Class, the project is found from below it, flags are checked like keys.
(tests/test_cli.py checks that the CLI prints these lines with exit code 2.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from nightlab import config
from nightlab.errors import UsageError
from nlkit import BASE_CONFIG, merged, toml_dumps


def load(tmp_path: Path, overrides: dict | None = None) -> config.Config:
    path = tmp_path / "nightlab.toml"
    path.write_text(toml_dumps(merged(BASE_CONFIG, overrides)))
    return config.load(path)


def error(tmp_path: Path, overrides: dict) -> str:
    """The one line a config with `overrides` is refused with, less the file's path (checked once, here)."""
    with pytest.raises(UsageError) as e:
        load(tmp_path, overrides)
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"{tmp_path / 'nightlab.toml'}: ")
    return line.removeprefix(f"{tmp_path / 'nightlab.toml'}: ")


@pytest.mark.parametrize("overrides, line", [
    ({"project": {"editable": ["/home/me/train.py"]}},
     "project.editable: Value error, '/home/me/train.py' must be a path relative to the project directory"),
    ({"project": {"scratchpad": ""}}, "project.scratchpad: Value error, '' must be a path relative to the project "
                                      "directory"),
    ({"run": {"budget_s": 60, "timeout_s": 30}}, "run: Value error, timeout_s (30) must be longer than budget_s (60)"),
    ({"sandbox": {"backend": "vm"}},
     "sandbox.backend: unknown sandbox 'vm' (known: auto, bwrap, docker, podman, process; or module:Class)"),
    ({"executor": {"name": "k8s"}},
     "executor.name: unknown executor 'k8s' (known: local, ray, slurm, ssh; or module:Class)"),
    ({"executor": {"ssh": {"hosts": [{"host": "gpu1", "port": 70000}]}}},
     "executor.ssh.hosts.0.port: Input should be less than or equal to 65535"),
    ({"agent": {"prices": {"my-model": {"input": 1.0}}}}, "agent.prices.my-model.output: Field required"),
    ({"audit": {"on_suspicious": "stop"}}, "audit.on_suspicious: Input should be 'warn' or 'hold'"),
    ({"run": {"budget_s": 0, "grace_s": -1}, "keep": {"noise_runs": 0}},
     "run.budget_s: Input should be greater than 0 (and 2 more)"),
])
def test_a_bad_setting_is_one_line_naming_its_key(tmp_path: Path, overrides: dict, line: str) -> None:
    assert error(tmp_path, overrides) == line


def test_paths_are_normalized_and_plugins_may_be_a_module_path(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"project": {"editable": ["./train.py", "src/../model.py"], "scratchpad": "./notes.md"},
                          "sandbox": {"backend": "mybox.sandbox:Box"}, "executor": {"name": "mylab.exec:Queue"}})
    assert cfg.project.editable == ["train.py", "model.py"] and cfg.project.scratchpad == "notes.md"
    assert (cfg.sandbox.backend, cfg.executor.name) == ("mybox.sandbox:Box", "mylab.exec:Queue")
    assert cfg.path == tmp_path / "nightlab.toml" and cfg.root == tmp_path


def test_a_file_that_cannot_be_read_as_toml_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=rf"^{tmp_path / 'missing.toml'}: config file not found$"):
        config.load(tmp_path / "missing.toml")
    (tmp_path / "nightlab.toml").write_bytes(b"\xff\xfe[run]\n")
    with pytest.raises(UsageError, match=rf"^{tmp_path / 'nightlab.toml'}: not valid TOML: 'utf-8' codec"):
        config.load(tmp_path / "nightlab.toml")


def test_the_project_is_found_from_below_it_and_from_inside_a_tags_worktree(tmp_path: Path) -> None:
    load(tmp_path)
    (tmp_path / "src" / "deep").mkdir(parents=True)
    tree = tmp_path / ".nightlab" / "t" / "worktree"
    tree.mkdir(parents=True)
    (tree / "nightlab.toml").write_text("# the tag's copy, not the project's\n")
    assert config.find_config(tmp_path / "src" / "deep") == tmp_path / "nightlab.toml"
    assert config.find_config(tree) == tmp_path / "nightlab.toml"
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    with pytest.raises(UsageError, match="^no nightlab.toml in .* or its parents \\(run `nightlab init` first"):
        config.find_config(elsewhere)


def test_a_flag_is_checked_like_the_key_it_mirrors(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    config.override(cfg, "run.budget_s", 7, "--budget")
    assert cfg.run.budget_s == 7
    with pytest.raises(UsageError, match=r"^--budget: Input should be greater than 0 \(config key run.budget_s\)$"):
        config.override(cfg, "run.budget_s", 0, "--budget")
    with pytest.raises(UsageError, match=r"^--sandbox: unknown sandbox 'vm' .* \(config key sandbox.backend\)$"):
        config.override(cfg, "sandbox.backend", "vm", "--sandbox")
    assert (cfg.run.budget_s, cfg.sandbox.backend) == (7, "process")  # a refused flag changes nothing


def test_only_the_agents_endpoint_may_change_without_a_commit() -> None:
    base = toml_dumps(merged(BASE_CONFIG, {"agent": {"name": "openai", "model": "a"}}))
    assert config.same_but_endpoint(base, toml_dumps(merged(BASE_CONFIG, {"agent": {
        "name": "openai", "model": "b", "base_url": "http://127.0.0.1:8080/v1", "temperature": 0.2}})))
    run = {"run": {"budget_s": 1}}
    assert config.same_but_endpoint(toml_dumps(run), toml_dumps(run | {"agent": {"model": "x"}}))  # [agent] added
    assert not config.same_but_endpoint(base, toml_dumps(merged(BASE_CONFIG, {"agent": {"name": "anthropic"}})))
    assert not config.same_but_endpoint(base, base.replace("budget_s = 1", "budget_s = 2"))
    assert not config.same_but_endpoint(base, base + "[broken\n")
