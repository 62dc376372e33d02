"""Plug-ins of a user's own: `[sandbox] backend` and `[executor] name` take `module:Class`, and a name that is
neither a known short name nor such a path is one line naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nlkit import idea, make_project, one_line_error, sub

# What a user would write in a module of their own: each class notes in the run directory that it was used.
PLUGINS = '''"""A sandbox and an executor of a user's own."""
from pathlib import Path

from nightlab.executors.local import LocalExecutor
from nightlab.sandbox.process import ProcessSandbox


class NotingSandbox(ProcessSandbox):
    name = "noting"

    def run(self, spec):
        result = super().run(spec)
        Path(spec.run_dir, "sandbox-was-here").write_text(spec.command)
        return result


class NotingExecutor(LocalExecutor):
    name = "noting"

    def submit(self, job):
        Path(job.spec.run_dir).mkdir(parents=True, exist_ok=True)
        Path(job.spec.run_dir, "executor-was-here").write_text(job.id)
        return super().submit(job)
'''


def _project(tmp_path: Path, **config: dict):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "myplugins.py").write_text(PLUGINS)
    return make_project(tmp_path, config=config, extra_env={"PYTHONPATH": str(plugins)},
                        ideas=[idea("raise LR", sub("LR = 0.1", "LR = 0.3"))])


def test_nightlab_run_uses_a_sandbox_and_an_executor_named_by_module_and_class(tmp_path: Path) -> None:
    proj = _project(tmp_path, sandbox={"backend": "myplugins:NotingSandbox"},
                    executor={"name": "myplugins:NotingExecutor"})
    proj.run("--max-trials", "1")
    assert [r["status"] for r in proj.ledger()] == ["baseline", "keep"]
    for n in (0, 1):
        run_dir = proj.state() / "runs" / str(n)
        assert (run_dir / "sandbox-was-here").read_text() == "python train.py"
        assert (run_dir / "executor-was-here").read_text().startswith(f"{n}.")
        assert json.loads((run_dir / "sandbox.json").read_text())["backend"] == "noting"
    (meta,) = proj.rows("SELECT value FROM meta WHERE key = 'executor'")
    assert json.loads(meta["value"]) == "noting"


def test_nightlab_trial_takes_a_sandbox_of_ones_own_from_the_flag(tmp_path: Path) -> None:
    proj = _project(tmp_path)
    proc = proj.nl("trial", "--record", "--sandbox", "myplugins:NotingSandbox")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (proj.dir / ".nightlab" / "manual").iterdir()
    assert (run_dir / "sandbox-was-here").read_text() == "python train.py"


@pytest.mark.parametrize(("key", "value", "role"), [("sandbox.backend", "chroot", "sandbox"),
                                                   ("executor.name", "threads", "executor"),
                                                   ("sandbox.backend", "myplugins.NotingSandbox", "sandbox")])
def test_a_name_neither_known_nor_module_and_class_is_one_line_naming_the_key_and_the_file(
        tmp_path: Path, key: str, value: str, role: str) -> None:
    section, name = key.split(".")
    proj = _project(tmp_path, **{section: {name: value}})
    line = one_line_error(proj.run("--max-trials", "0", ok=False))
    assert line.startswith(f"error: {proj.dir / 'nightlab.toml'}: {key}: unknown {role} {value!r}"), line
    assert "module:Class" in line
    assert not proj.state().exists()  # refused when the config was read: nothing ran


def test_a_bogus_executor_flag_is_one_line_naming_the_flag_and_the_key(tmp_path: Path) -> None:
    # (--sandbox: test_cli.py)
    proj = _project(tmp_path)
    line = one_line_error(proj.run("--max-trials", "0", "--executor", "nope", ok=False))
    assert line == ("error: --executor: unknown executor 'nope' (known: local, ray, slurm, ssh; or module:Class) "
                    "(config key executor.name)"), line


@pytest.mark.parametrize(("path", "said"), [("nosuch.plugins:X", "no module named 'nosuch'"),
                                            ("myplugins:Missing", "module myplugins has no class Missing")])
def test_a_module_and_class_that_is_not_there_is_one_line_naming_it(tmp_path: Path, path: str, said: str) -> None:
    proj = _project(tmp_path, sandbox={"backend": path})
    line = one_line_error(proj.nl("trial"))
    assert line.startswith(f"error: {path}: {said}"), line  # the path as written, not mangled by the console
