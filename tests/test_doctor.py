"""`nightlab doctor` explains, in plain words, what works here and why the rest does not."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nlkit import CLI, isolated_env


def test_doctor_reports_sandboxes_limits_gpus_and_tools(tmp_path: Path) -> None:
    proc = subprocess.run([*CLI, "doctor"], cwd=tmp_path, env=isolated_env(tmp_path / "home"), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert "ok" in lines["bwrap"] and "works" in lines["bwrap"]
    assert "picks bwrap" in lines["auto"]
    assert "NO isolation" in lines["process"]
    assert lines["docker"].split()[0] in ("ok", "no")  # here: a client without an engine → "no" with the reason
    if lines["docker"].split()[0] == "no":
        assert "not usable" in lines["docker"]
    assert "cgroup" in lines["memory"] or "RLIMIT_DATA" in lines["memory"]
    assert "devices" in lines and ("CPU-only" in lines["devices"] or "/dev/nvidia" in lines["devices"])
    for name in ("claude", "codex", "optuna", "anthropic", "openai"):
        assert name in lines, name
    for header in ("sandbox", "limits", "gpu", "agent CLIs", "extras"):
        assert header in proc.stdout.splitlines()
