"""A project on disk: its state directory and tags, `init`, bundled examples, `prepare`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from nightlab import tags
from nightlab.config import CONFIG_NAME, Config
from nightlab.errors import UsageError
from nightlab.sandbox import interpreter_command
from nightlab.tags import STATE
from nightlab.tags import check_tag as check_tag  # re-exported: its home is tags.py
from nightlab.workspace import git, identity_env, ignore_state_dir


def state_dir(cfg: Config, tag: str) -> Path:
    return cfg.root / STATE / tag


def latest_tag(cfg: Config) -> str:
    """The most recently used tag, or `run` on a first run."""
    return tags.latest_tag(cfg.root)


# -- examples ---------------------------------------------------------------------------------
def examples_dir() -> Path:
    """Bundled examples: `examples/` of a source checkout (editable install)."""
    here = Path(__file__).resolve()
    for candidate in (here.parent / "examples", here.parents[2] / "examples"):
        if candidate.is_dir():
            return candidate
    raise UsageError("bundled examples not found (install nightlab from a source checkout)")


def example_names() -> list[str]:
    return sorted(p.name for p in examples_dir().iterdir() if (p / CONFIG_NAME).is_file())


def copy_example(name: str, dest: Path) -> None:
    src = examples_dir() / name
    if name not in example_names():
        raise UsageError(f"--example {name!r}: no such example (available: {', '.join(example_names())})")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} is not empty; choose a new directory for the example")
    ignore = shutil.ignore_patterns("data", "__pycache__", ".nightlab", "*.pyc")
    shutil.copytree(src, dest, ignore=ignore, dirs_exist_ok=True)
    git("init", "--quiet", "-b", "main", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "--quiet", "-m", f"nightlab example: {name}", cwd=dest, env=identity_env(dest))


# -- init -------------------------------------------------------------------------------------
def write_config(dest: Path, editable: list[str], metric: str, goal: str, command: str, budget: float) -> Path:
    path = dest / CONFIG_NAME
    if path.exists():
        raise UsageError(f"{path} already exists")
    protected = [p for p in ("prepare.py", "evaluate.py") if (dest / p).exists()]
    template = resources.files("nightlab").joinpath("templates/nightlab.toml").read_text()
    text = template.format(
        editable=json.dumps(editable), protected=json.dumps(protected), command=json.dumps(command),
        budget=f"{budget:g}", timeout=f"{max(2 * budget, budget + 60):g}",
        prepare=json.dumps("python prepare.py" if (dest / "prepare.py").exists() else ""),
        metric=json.dumps(metric), goal=json.dumps(goal))
    path.write_text(text)
    program = dest / "program.md"
    if not program.exists():
        program.write_text(resources.files("nightlab").joinpath("templates/program.md").read_text())
    return path


# -- prepare ----------------------------------------------------------------------------------
def untracked_entries(root: Path) -> set[str]:
    listing = ("ls-files", "--others", "--directory", "--no-empty-directory", "--exclude-standard")
    out = git(*listing, "--ignored", cwd=root) + "\n" + git(*listing, cwd=root)
    return {line.rstrip("/") for line in out.splitlines() if line and not line.startswith(STATE)}


def prepare(cfg: Config) -> list[str]:
    """Run the one-time `[run] prepare` step in the project directory; remember what it created.

    It is the user's own trusted step (it may download data), so it runs with the caller's environment.
    """
    if not cfg.run.prepare:
        raise UsageError(f"{cfg.path}: run.prepare is empty; nothing to prepare")
    ignore_state_dir(cfg.root)
    before = untracked_entries(cfg.root)
    proc = subprocess.run(interpreter_command(cfg.run.prepare), shell=True, cwd=cfg.root,
                          env={**os.environ, "NIGHTLAB_PREPARE": "1"})
    if proc.returncode != 0:
        raise UsageError(f"prepare step `{cfg.run.prepare}` failed with exit code {proc.returncode}")
    created = sorted(untracked_entries(cfg.root) - before)
    record = cfg.root / STATE / "prepared.json"
    record.parent.mkdir(exist_ok=True)
    tmp = record.with_suffix(".tmp")  # a kill mid-write must not leave a record every later run chokes on
    tmp.write_text(json.dumps(sorted(set(_prepared(record)) | set(created)), indent=1) + "\n")
    os.replace(tmp, record)
    return created


def prepared(cfg: Config) -> bool:
    """Whether `[run] prepare` has run for this project (through nightlab: it keeps a record of what it made)."""
    return (cfg.root / STATE / "prepared.json").exists()


def _prepared(record: Path) -> list[str]:
    try:
        return json.loads(record.read_text()) if record.exists() else []
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{record} is damaged: delete it and run `nightlab prepare` again") from None


def visible_data(cfg: Config) -> list[str]:
    """Project-relative paths every trial sees: [data] train/val and what `prepare` made, never test or select."""
    prepared = _prepared(cfg.root / STATE / "prepared.json")
    hidden = [Path(t) for t in cfg.data.hidden()]

    def holds_hidden(p: str) -> bool:
        return any(t == Path(p) or Path(p) in t.parents for t in hidden)

    return [p for p in dict.fromkeys([*cfg.data.train, *cfg.data.val, *prepared]) if not holds_hidden(p)]
