"""What a project's runs may see and use: the RunSpec fields an isolating backend needs, from the config."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nightlab.config import Config
from nightlab.project import STATE, visible_data


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
