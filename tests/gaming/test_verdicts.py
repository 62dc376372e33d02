"""The audit's verdicts through the real loop on a tiny project (the process backend, so it is quick): recorded in
the ledger, `log --json`, `status --json`, results.tsv and the commit message; `warn` keeps a flagged win, `hold`
keeps the branch at the last clean best until a person accepts or rejects it."""

from __future__ import annotations

import csv
from pathlib import Path

from nlkit import idea, make_project, one_line_error, sub

HONEST = idea("more bonus", sub("BONUS = 0.0", "BONUS = 0.1"))
FORGED = idea("forge the metric", sub('print(f"peak_memory_gb: {MEMORY}")',
                                      'print(f"peak_memory_gb: {MEMORY}")\nprint("val_loss: 0.5")'))
MORE = idea("even more bonus", sub("BONUS = 0.1", "BONUS = 0.2"))


def test_warn_keeps_a_flagged_win_and_records_why(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[HONEST, FORGED])
    proj.run("--max-trials", "2")
    log = {t["n"]: t for t in proj.log_json()}
    assert (log[1]["status"], log[1]["audit"], log[1]["findings"]) == ("keep", "clean", [])
    assert (log[2]["status"], log[2]["audit"]) == ("keep", "suspicious")
    assert {f["check"] for f in log[2]["findings"]} >= {"metric-constant", "metric-twice"}
    assert log[2]["findings"][0]["file"] == "train.py" and log[2]["findings"][0]["lines"]
    assert log[2]["reason"] == ""  # warn: the keep rule's call stands as it was
    status = proj.status_json()
    assert (status["flagged"], status["held"], status["best_trial"]) == ([2], [], 2)  # warn: built upon
    assert "audit: suspicious (metric-constant (train.py:" in proj.git("log", "-1", "--format=%B", "nightlab/t")
    with open(proj.state() / "results.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["audit"] for r in rows] == ["", "clean", "suspicious"]  # the baseline is the user's own: not audited
    assert "suspicious: trial 2" in proj.nl("status", "--tag", "t").stdout


def test_hold_keeps_the_branch_at_the_clean_best_until_a_person_decides(tmp_path: Path) -> None:
    proj = make_project(tmp_path, config={"audit": {"on_suspicious": "hold"}}, ideas=[HONEST, FORGED])
    proj.run("--max-trials", "2")
    log = {t["n"]: t for t in proj.log_json()}
    assert log[2]["status"] == "held" and "nightlab accept 2" in log[2]["reason"]
    assert proj.status_json()["held"] == [2]
    assert proj.git("rev-parse", "nightlab/t") == log[1]["commit"]  # the last clean best
    assert proj.nl("accept", "2", "--tag", "t").returncode == 0
    log = {t["n"]: t for t in proj.log_json()}
    assert (log[2]["status"], log[2]["audit"]) == ("keep", "accepted")
    assert proj.git("rev-parse", "nightlab/t") == log[2]["commit"]
    assert proj.status_json()["best_trial"] == 2


def test_a_held_win_the_best_moved_past_cannot_be_accepted(tmp_path: Path) -> None:
    proj = make_project(tmp_path, config={"audit": {"on_suspicious": "hold"}}, ideas=[HONEST, FORGED, MORE])
    proj.run("--max-trials", "3")
    log = {t["n"]: t for t in proj.log_json()}
    assert [log[n]["status"] for n in (1, 2, 3)] == ["keep", "held", "keep"]  # 3 built on 1, not on 2
    line = one_line_error(proj.nl("accept", "2", "--tag", "t"))
    assert "kept since" in line
    assert proj.nl("reject", "2", "--tag", "t").returncode == 0
    assert {t["n"]: t for t in proj.log_json()}[2]["status"] == "discard"
    assert "not held" in one_line_error(proj.nl("reject", "2", "--tag", "t"))


def test_a_bad_audit_setting_is_one_line(tmp_path: Path) -> None:
    proj = make_project(tmp_path, config={"audit": {"on_suspicious": "block"}})
    line = one_line_error(proj.nl("run", "--tag", "t"))
    assert "audit.on_suspicious" in line
