"""What a run leaves for humans and scripts: results.tsv, `nightlab log --json`, `nightlab status --json`."""

from __future__ import annotations

import json

import pytest
from scenariokit import SCENARIO, SCENARIO_STATUS, Scenario

from nlkit import BASE_LOSS, one_line_error

LOG_KEYS = {"n", "status", "metric", "metrics", "delta", "description", "phase", "commit", "parent", "seconds",
            "seed", "cost_usd"}
STATUS_KEYS = {"tag", "trials", "kept", "baseline", "best", "best_trial", "goal", "metric_name", "noise", "phase",
               "branch"}


def test_results_tsv(scenario: Scenario) -> None:
    lines = (scenario.proj.state() / "results.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:5] == ["commit", "val_loss", "memory_gb", "status", "description"]
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) == len(SCENARIO) + 1  # one row per trial, the baseline included
    assert all(len(r) == len(header) for r in rows)
    assert [r[3] for r in rows] == SCENARIO_STATUS
    ledger = scenario.ledger
    for row, rec in zip(rows, ledger):
        assert row[4] == rec["description"]
        assert row[0] == rec["commit_sha"][:7]
        assert rec["commit_sha"].startswith(row[0])
    assert float(rows[0][1]) == pytest.approx(BASE_LOSS)
    assert float(rows[1][1]) == pytest.approx(1.0) and float(rows[1][2]) == pytest.approx(0.1)
    assert rows[4][1] == ""  # a crash has no metric
    assert rows[8][0] == ""  # a rejected idea has no commit


def test_log_json(scenario: Scenario) -> None:
    log = scenario.proj.log_json()
    assert isinstance(log, list)
    assert [t["n"] for t in log] == list(range(len(SCENARIO) + 1))
    for t in log:
        assert LOG_KEYS <= set(t), LOG_KEYS - set(t)
    assert [t["status"] for t in log] == SCENARIO_STATUS
    ledger = scenario.ledger
    base, t1, t2, t4 = log[0], log[1], log[2], log[4]

    assert base["status"] == "baseline" and base["delta"] is None and base["seed"] == 0
    assert base["metric"] == pytest.approx(BASE_LOSS)
    assert base["commit"] == scenario.before["head"]

    assert t1["metric"] == pytest.approx(1.0)
    assert t1["metrics"] == {"val_loss": pytest.approx(1.0), "peak_memory_gb": pytest.approx(0.1)}
    assert t1["delta"] == pytest.approx(-0.04)
    assert t1["description"] == "raise LR to 0.3"
    assert t1["phase"] == "1 Hyperparameters"
    assert t1["commit"] == ledger[1]["commit_sha"] == scenario.proj.git("rev-parse", "nightlab/t")
    assert t1["parent"] == base["commit"]
    assert t1["seconds"] > 0 and t1["seed"] == 1000 and t1["cost_usd"] == 0

    assert t2["parent"] == t1["commit"] and t2["delta"] == pytest.approx(0.09)
    assert t4["metric"] is None and t4["delta"] is None and t4["status"] == "crash"
    assert log[8]["commit"] == ""  # rejected: nothing was committed


def test_status_json(scenario: Scenario) -> None:
    s = scenario.proj.status_json()
    assert STATUS_KEYS <= set(s), STATUS_KEYS - set(s)
    assert s["tag"] == "t"
    assert s["trials"] == len(SCENARIO)
    assert s["kept"] == 1
    assert s["baseline"] == pytest.approx(BASE_LOSS)
    assert s["best"] == pytest.approx(1.0)
    assert s["best_trial"] == 1
    assert s["goal"] == "minimize"
    assert s["metric_name"] == "val_loss"
    assert s["noise"] is None  # noise_runs = 1: no estimate
    assert s["phase"] == "1 Hyperparameters"
    assert s["branch"] == "nightlab/t"


def test_the_default_tag_is_the_most_recent_one(scenario: Scenario) -> None:
    proc = scenario.proj.nl("status", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tag"] == "t"


def test_tables_print(scenario: Scenario) -> None:
    status = scenario.proj.nl("status", "--tag", "t")
    assert status.returncode == 0 and "nightlab/t" in status.stdout and "val_loss" in status.stdout
    log = scenario.proj.nl("log", "--tag", "t", env=scenario.proj.env | {"COLUMNS": "250"})
    assert log.returncode == 0
    assert "raise LR to 0.3" in log.stdout and "tamper during the run" in log.stdout


@pytest.mark.parametrize("command", ["status", "log"])
def test_an_unknown_tag_is_a_usage_error(scenario: Scenario, command: str) -> None:
    line = one_line_error(scenario.proj.nl(command, "--tag", "nope", "--json"))
    assert "nope" in line
