"""`nightlab verify --seeds 3 --ablate --test` end to end on the quickstart example (real numpy training)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from nlkit import CLI, git, idea, ideas_toml, isolated_env, sub

pytestmark = pytest.mark.slow


def test_verify_on_the_quickstart(tmp_path: Path) -> None:
    env = isolated_env(tmp_path / "home")
    dest = tmp_path / "qs"

    def nl(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([*CLI, *args], cwd=dest if dest.exists() else tmp_path, env=env | {"COLUMNS": "200"},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"nightlab {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    nl("init", str(dest), "--example", "quickstart")
    toml = (dest / "nightlab.toml").read_text()
    for old, new in [("budget_s = 8", "budget_s = 2"), ("noise_runs = 5", "noise_runs = 2"), ("confirm = 2", "confirm = 1"),
                     ('name = "optuna"', 'name = "scripted"')]:
        assert old in toml
        toml = toml.replace(old, new)
    (dest / "nightlab.toml").write_text(toml)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "a quick config", cwd=dest, env=env)
    (dest / "ideas.toml").write_text(ideas_toml([
        idea("LR x10", sub("LEARNING_RATE = 0.001 ", "LEARNING_RATE = 0.01  ")),
        idea("bigger output init", sub("INIT_SCALE = 1.0 ", "INIT_SCALE = 4.0 "))]))
    nl("prepare")
    nl("run", "--tag", "q", "--max-trials", "2")

    proc = nl("verify", "--tag", "q", "--seeds", "3", "--ablate", "--test")
    assert "val_loss: best vs baseline" in proc.stdout and "test_loss: best vs baseline" in proc.stdout

    state = dest / ".nightlab" / "q"
    db = sqlite3.connect(state / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    kept = [r["n"] for r in db.execute("SELECT n FROM trials WHERE status = 'keep'")]
    best = db.execute("SELECT commit_sha FROM trials WHERE status = 'keep' ORDER BY n DESC").fetchone()[0]
    rows = [dict(r) for r in db.execute("SELECT * FROM verify ORDER BY rowid")]
    db.close()
    assert kept, "LR x10 is a large, reliable win on the quickstart"
    # the quickstart reports per-example losses: best vs baseline is also compared on the same examples
    assert [r["kind"] for r in rows] == ["val", "val-paired", *["ablate"] * len(kept), "test"]
    val, test = rows[0], rows[-1]
    assert rows[1]["effect"] == pytest.approx(val["effect"])  # the same runs, a wider (honest) interval
    assert val["effect"] > 0 and val["n"] == 3 and 0 <= val["p_value"] <= 1 and val["ci_low"] <= val["ci_high"]
    assert 0 < test["value"] < 1 and 0 < test["reference"] < 1  # test cross-entropies
    assert all(len(json.loads(r["runs"])) == 3 for r in rows if not r["note"])

    tree = state / "worktree"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, env=env).stdout.strip()
    assert head == best
    assert not (tree / "data" / "test.npz").exists() and (tree / "data" / "val.npz").exists()
    status = json.loads(nl("status", "--tag", "q", "--json").stdout)
    assert len(status["verify"]) == len(rows)
