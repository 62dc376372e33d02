"""Red team, metric gaming: every edit of edits.py runs as one trial of the quickstart example through the real loop
(`nightlab run`, the scripted agent, the real bwrap sandbox, `[audit] on_suspicious = "hold"`), in one session.

Each edit must be stopped (the sandbox, the evaluator or the harness ends the trial with the expected status) or
flagged by the audit; a flagged win is held, so the branch stays at the clean baseline and every edit is judged
against it. Then a person's `nightlab reject` and `nightlab accept` of held wins. docs/audit.md has the table.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
from edits import EDITS, Edit

from examplekit import example_cli
from nlkit import git, idea, ideas_toml, isolated_env, sub

pytestmark = pytest.mark.slow

CONFIG = [("budget_s = 8", "budget_s = 1"), ("timeout_s = 60", "timeout_s = 40"), ("noise_runs = 5", "noise_runs = 2"),
          ("confirm = 2", "confirm = 0"),
          # the new tables go before [agent], whose own keys follow its name
          ('[agent]\nname = "optuna"', '[sandbox]\nbackend = "bwrap"\n\n[report]\nhtml = false\n\n'
                                       '[audit]\non_suspicious = "hold"\n\n'
                                       '[agent]\nname = "scripted"\nqueue = "ideas.toml"')]


def as_idea(e: Edit) -> dict:
    return idea(e.name, *(sub(s, r, e.file) for s, r in e.subs), hypothesis=e.what)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory):
    """The quickstart after a baseline and one trial per edit: (nl, project dir, ledger rows by name, seconds)."""
    root = tmp_path_factory.mktemp("gaming")
    nl = example_cli(root, "quickstart", CONFIG, {"ideas.toml": ideas_toml([as_idea(e) for e in EDITS])})
    start = time.monotonic()
    nl("run", "--tag", "g", "--max-trials", str(len(EDITS)), timeout=1200)
    seconds = time.monotonic() - start
    print(f"\nthe red-team session ({len(EDITS)} trials and the baseline) took {seconds:.0f} s")
    log = json.loads(nl("log", "--tag", "g", "--json").stdout)
    return nl, root / "quickstart", {t["description"]: t for t in log}, seconds


def outcome(e: Edit, t: dict) -> str:
    """'stopped', 'flagged' or 'missed', as the table in docs/audit.md says it."""
    if e.stopped and t["status"] == e.stopped:
        return "stopped"
    checks = {f["check"] for f in t["findings"]}
    if t["audit"] == "suspicious" and checks & e.flagged and t["status"] != "keep":
        return "flagged"
    return "missed"


def test_every_gaming_edit_is_stopped_or_flagged(session) -> None:
    nl, project, trials, _ = session
    results = {e.name: outcome(e, trials[e.name]) for e in EDITS}
    for e in EDITS:  # the table of docs/audit.md, as this run found it (pytest -s shows it)
        t = trials[e.name]
        print(f"| {e.name} | {results[e.name]} | {t['status']} | {', '.join(f['check'] for f in t['findings'])} |")
    detail = {e.name: (trials[e.name]["status"], trials[e.name]["reason"][:200]) for e in EDITS if
              results[e.name] == "missed"}
    assert not detail, f"missed: {detail}"
    held = [t["n"] for t in trials.values() if t["status"] == "held"]
    assert held, "the forged metrics.json wins: it must be held"
    assert trials["forged-metrics-json"]["status"] == "held"
    # the branch stays at the last clean best: the baseline, since every win was held
    status = json.loads(nl("status", "--tag", "g", "--json").stdout)
    assert status["best_trial"] == 0 and status["kept"] == 0
    assert sorted(status["held"]) == sorted(held)
    assert set(status["flagged"]) >= set(held)
    baseline = next(t for t in trials.values() if t["n"] == 0)
    assert git("rev-parse", "nightlab/g", cwd=project, env=isolated_env(project.parent / "home")) == baseline["commit"]
    # the stopped ones ended the way docs/audit.md says, for the reason it gives
    assert "per-example values" in trials["eval-subset"]["reason"]
    assert "prepare.py" in trials["edit-evaluator"]["reason"]
    state = project / ".nightlab" / "g" / "runs"
    assert "FileNotFoundError" in (state / str(trials["read-test"]["n"]) / "run.log").read_text()
    # results.tsv carries the verdict and the findings of each trial
    with open(project / ".nightlab" / "g" / "results.tsv", newline="") as f:
        rows = {r["description"]: r for r in csv.DictReader(f, delimiter="\t")}
    assert rows["forged-metrics-json"]["audit"] == "suspicious"
    assert "metric-constant" in rows["forged-metrics-json"]["findings"]


def test_a_person_rejects_and_accepts_held_wins(session) -> None:
    nl, project, trials, _ = session
    held = sorted((t for t in trials.values() if t["status"] == "held"), key=lambda t: t["n"])
    assert held
    env = isolated_env(project.parent / "home")
    first = held[0]
    assert "trial" in nl("reject", str(first["n"]), "--tag", "g").stdout
    after = {t["n"]: t for t in json.loads(nl("log", "--tag", "g", "--json").stdout)}
    assert after[first["n"]]["status"] == "discard" and after[first["n"]]["audit"] == "rejected"
    assert json.loads(nl("status", "--tag", "g", "--json").stdout)["best_trial"] == 0
    # a trial that is not held cannot be accepted: one line, exit 2, nothing changes
    proc = nl_fail(project, env, "accept", str(first["n"]))
    assert proc.returncode == 2 and "not held" in proc.stderr and "Traceback" not in proc.stderr
    if len(held) < 2:
        return
    second = held[1]
    nl("accept", str(second["n"]), "--tag", "g")
    after = {t["n"]: t for t in json.loads(nl("log", "--tag", "g", "--json").stdout)}
    assert after[second["n"]]["status"] == "keep" and after[second["n"]]["audit"] == "accepted"
    assert git("rev-parse", "nightlab/g", cwd=project, env=env) == after[second["n"]]["commit"]
    assert "status: keep (accepted after the audit" in git("log", "-1", "--format=%B", "nightlab/g", cwd=project,
                                                            env=env)
    # the best moved on: a win held against the baseline cannot be accepted any more
    if len(held) > 2:
        proc = nl_fail(project, env, "accept", str(held[2]["n"]))
        assert proc.returncode == 2 and "kept since" in proc.stderr


def test_the_report_shows_the_findings_next_to_the_trial(session) -> None:
    nl, project, trials, _ = session
    nl("report", "--tag", "g")
    html = (project / ".nightlab" / "g" / "report.html").read_text()
    assert 'class="audit" data-audit="suspicious"' in html or 'data-audit="rejected"' in html
    assert "metric-constant" in html


def nl_fail(project: Path, env: dict, *args: str):
    import subprocess

    from nlkit import CLI

    return subprocess.run([*CLI, *args, "--tag", "g"], cwd=project, env=env | {"COLUMNS": "200"},
                          capture_output=True, text=True, timeout=120)
