"""`nightlab demo` end to end: the quickstart example, the optuna agent, real runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def nightlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from nightlab.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_demo_runs_the_quickstart_end_to_end(tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    out = nightlab("demo", "--dir", str(dest), "--trials", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "stopped: reached --max-trials 3" in out.stdout
    assert "where everything is" in out.stdout

    log = json.loads(nightlab("log", "--json", "--tag", "demo", cwd=dest).stdout)
    assert [t["n"] for t in log] == [0, 1, 2, 3]
    assert log[0]["status"] == "baseline" and len(log[0]["runs"]) == 5  # noise runs (the quickstart's [keep] noise_runs)
    assert all(t["status"] in {"keep", "discard", "crash", "timeout", "invalid", "rejected"} for t in log[1:])
    assert all("→" in t["description"] for t in log[1:] if t["status"] != "rejected")  # optuna's "A x → y"
    # the audit judged every kept or discarded change and flagged none: optuna only sets constants
    assert all(t["audit"] == "clean" for t in log[1:] if t["status"] in ("keep", "discard")), log

    status = json.loads(nightlab("status", "--json", cwd=dest).stdout)
    assert status["tag"] == "demo" and status["trials"] == 3 and status["metric_name"] == "val_loss"
    assert status["noise"] and status["noise"] > 0
    assert status["examples"] == 360 and status["eval_se"] > 0 and not status["deterministic"]  # per-example losses

    # with something kept, the demo ends by re-scoring the chain on the selection split (and test), report included
    if status["kept"]:
        text = " ".join(out.stdout.split())
        assert "re-ranking on the selection split" in text and "select_loss" in text and "test_loss" in text
        assert (dest / ".nightlab" / "demo" / "report.html").read_text().count("re-ranking on the selection split") == 1
        assert {r["kind"] for r in status["verify"]} >= {"select", "select-test"}
        assert not (tree := dest / ".nightlab" / "demo" / "worktree" / "data" / "select.npz").exists(), tree

    # the test split was never visible to a trial; train/val were
    tree = dest / ".nightlab" / "demo" / "worktree"
    assert (tree / "data" / "train.npz").exists() and (tree / "data" / "val.npz").exists()
    assert not (tree / "data" / "test.npz").exists()
    # the user's checkout is untouched
    porcelain = subprocess.run(["git", "status", "--porcelain"], cwd=dest, capture_output=True, text=True).stdout
    assert porcelain.strip() == ""
