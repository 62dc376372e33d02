"""Every RunSpec, built from the config: the command, its budget, the environment it may pass through, and
what an isolating backend shows the run and limits it to."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from nightlab.config import Config
from nightlab.project import STATE, visible_data
from nightlab.sandbox import passthrough
from nightlab.types import RunSpec


def run_spec(cfg: Config, cwd: Path, run_dir: Path, seed: int, trial: int, env: dict[str, str] | None = None,
             isolation: dict | None = None, budget_s: float | None = None) -> RunSpec:
    """One run of the project's command in `cwd`: the config's `[run] env` passed through (secrets refused),
    then `env`; `isolation` replaces what spec_fields(cfg, cwd) would show and limit; `budget_s` replaces
    `[run] budget_s` (a trial screened at a shorter budget)."""
    return RunSpec(command=cfg.run.command, cwd=cwd, run_dir=run_dir,
                   budget_s=cfg.run.budget_s if budget_s is None else budget_s,
                   timeout_s=cfg.run.timeout_s, seed=seed, trial=trial,
                   env=passthrough(cfg.run.env, str(cfg.path)) | (env or {}), grace_s=cfg.run.grace_s,
                   **(isolation if isolation is not None else spec_fields(cfg, cwd)))


@lru_cache(maxsize=16)  # asked for every run; where a project's repository is does not change while nightlab runs
def _repo_root(root: Path) -> Path:
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    return Path(proc.stdout.strip()).resolve() if proc.returncode == 0 and proc.stdout.strip() else root


def spec_fields(cfg: Config, cwd: Path) -> dict:
    """Keyword arguments for RunSpec: read-only data, what to hide (the project, the ledger, the test split), limits.

    The project (and the repository holding it) is hidden, so only what is bound again is visible: the
    candidate's tree (cwd), the targets of the [data] train/val links, the interpreter; and the run
    directory, the only writable path. `[data] test` and `select` are masked wherever they would otherwise show.
    """
    root = cfg.root.resolve()

    def where(p: str, base: Path) -> Path:
        return Path(p) if Path(p).is_absolute() else base / p

    readonly = [where(p, root).resolve() for p in visible_data(cfg) if where(p, root).exists()]
    masked = [where(t, base) for t in cfg.data.hidden() for base in (root, cwd)]
    masked.append(cwd / STATE)  # `nightlab trial` runs in the project itself: other tags' ledgers stay hidden
    return {
        "readonly": readonly,
        "hidden": list(dict.fromkeys([_repo_root(root), root])),
        "masked": list(dict.fromkeys(masked)),
        "memory_gb": cfg.sandbox.memory_gb,
        "gpus": cfg.sandbox.gpus,
        "max_pids": cfg.sandbox.max_pids,
        "max_log_mb": cfg.sandbox.max_log_mb,
        "max_run_dir_mb": cfg.sandbox.max_run_dir_mb,
        "image": cfg.sandbox.image,
        "runtime": cfg.sandbox.runtime,
    }
