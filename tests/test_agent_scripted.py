"""ScriptedAgent: a queue of human-written edits applied one idea per trial, stable across resumes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nightlab.agents import load_agent
from nightlab.agents.scripted import ScriptedAgent
from nightlab.config import Config
from nightlab.errors import AgentExhausted, AgentFailed, UsageError
from nightlab.types import Brief, Metric, Status

TRAIN = 'LR = 1e-3\nDEPTH = 4\n\n\ndef main():\n    print("lr", LR)\n'


def brief(n: int) -> Brief:
    return Brief(trial=n, text="", editable=["train.py"], metric=Metric("val_loss", "minimize"), best=None, noise=None)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "train.py").write_text(TRAIN)
    return tmp_path


def make(project: Path, queue: str, name: str = "ideas.toml") -> ScriptedAgent:
    (project / name).write_text(queue)
    cfg = Config()
    cfg.path = project / "nightlab.toml"
    cfg.agent.queue = name
    return ScriptedAgent(cfg, project / "state")


def idea(description: str, search: str, replace: str) -> str:
    head = f'[[idea]]\ndescription = "{description}"\n'
    return head + f'[[idea.edit]]\nfile = "train.py"\nsearch = "{search}"\nreplace = "{replace}"\n'


def test_search_replace_edits_only_the_match(project: Path) -> None:
    queue = '[[idea]]\ndescription = "raise LR"\nhypothesis = "too low"\n' + (
        '[[idea.edit]]\nfile = "train.py"\nsearch = "LR = 1e-3"\nreplace = "LR = 3e-3"\n'
    )
    agent = make(project, queue)
    proposal = agent.propose(project / "ws", brief(1))
    assert (project / "ws" / "train.py").read_text() == TRAIN.replace("LR = 1e-3", "LR = 3e-3")
    assert (proposal.description, proposal.hypothesis) == ("raise LR", "too low")
    assert "train.py" in proposal.transcript and "LR = 3e-3" in proposal.transcript
    agent.observe(1, Status.KEEP, 1.0)  # a no-op, but must accept the call


def test_content_replaces_the_whole_file(project: Path) -> None:
    queue = '[[idea]]\ndescription = "rewrite"\n[[idea.edit]]\nfile = "train.py"\ncontent = """X = 1\n"""\n'
    make(project, queue).propose(project / "ws", brief(1))
    assert (project / "ws" / "train.py").read_text() == "X = 1\n"


@pytest.mark.parametrize("repo_at", ["ws", "project"])
def test_patch_is_applied_with_git(project: Path, repo_at: str) -> None:
    """Patch paths are relative to the workspace, whether it is a repository root or inside one."""
    ws = project / "ws"
    subprocess.run(["git", "init", "-q"], cwd=ws if repo_at == "ws" else project, check=True)
    subprocess.run(["git", "add", "."], cwd=ws, check=True)
    (ws / "train.py").write_text(TRAIN.replace("DEPTH = 4", "DEPTH = 8"))
    patch = subprocess.run(["git", "diff", "--relative"], cwd=ws, check=True, capture_output=True, text=True).stdout
    assert "a/train.py" in patch
    (ws / "train.py").write_text(TRAIN)
    agent = make(project, f'[[idea]]\ndescription = "deeper"\n[[idea.edit]]\npatch = """{patch}"""\n')
    proposal = agent.propose(ws, brief(1))
    assert (ws / "train.py").read_text() == TRAIN.replace("DEPTH = 4", "DEPTH = 8")
    assert "applied patch to train.py" in proposal.transcript


def test_patch_that_does_not_apply_fails_the_idea(project: Path) -> None:
    patch = "--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n-LR = 5\n+LR = 6\n DEPTH = 4\n"
    agent = make(project, f'[[idea]]\ndescription = "bad"\n[[idea.edit]]\npatch = """{patch}"""\n')
    with pytest.raises(AgentFailed, match="patch does not apply"):
        agent.propose(project / "ws", brief(1))
    assert (project / "ws" / "train.py").read_text() == TRAIN


def test_several_edits_and_other_files(project: Path) -> None:
    queue = idea("both", "DEPTH = 4", "DEPTH = 6") + (
        '[[idea.edit]]\nfile = "prepare.py"\ncontent = "DATA = 1\\n"\n'  # the harness, not the agent, polices files
    )
    make(project, queue).propose(project / "ws", brief(1))
    assert "DEPTH = 6" in (project / "ws" / "train.py").read_text()
    assert (project / "ws" / "prepare.py").read_text() == "DATA = 1\n"


def test_resume_gives_the_same_idea_and_then_the_next(project: Path) -> None:
    queue = idea("first", "LR = 1e-3", "LR = 2e-3") + idea("second", "DEPTH = 4", "DEPTH = 5")
    assert make(project, queue).propose(project / "ws", brief(1)).description == "first"
    (project / "ws" / "train.py").write_text(TRAIN)  # the harness resets the workspace after a crash
    resumed = make(project, queue)
    assert resumed.propose(project / "ws", brief(1)).description == "first"
    assert resumed.propose(project / "ws", brief(2)).description == "second"
    lines = (project / "state" / "scripted.json").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"trial": 1, "idea": 0}, {"trial": 2, "idea": 1}]


def test_each_assignment_is_one_line_appended_and_a_line_a_kill_cut_is_dropped(project: Path) -> None:
    queue = "".join(idea(f"idea {i}", "LR = 1e-3", f"LR = {i}e-3") for i in range(1, 5))
    agent, state = make(project, queue), project / "state" / "scripted.json"
    agent.propose(project / "ws", brief(1))
    inode = state.stat().st_ino
    (project / "ws" / "train.py").write_text(TRAIN)
    agent.propose(project / "ws", brief(2))
    assert state.stat().st_ino == inode  # appended, not written again
    state.write_text(state.read_text() + '{"trial": 3, "id')  # a kill in the middle of trial 3's line
    (project / "ws" / "train.py").write_text(TRAIN)
    assert make(project, queue).propose(project / "ws", brief(3)).description == "idea 3"  # not applied: given again
    assert state.read_text().endswith('{"trial": 3, "idea": 2}\n') and state.read_text().count("trial") == 3


def test_an_older_nightlabs_state_is_read(project: Path) -> None:
    queue = idea("first", "LR = 1e-3", "LR = 2e-3") + idea("second", "DEPTH = 4", "DEPTH = 5")
    (project / "state").mkdir()
    (project / "state" / "scripted.json").write_text(json.dumps({"trials": {"1": 0}}, indent=1) + "\n")
    assert make(project, queue).propose(project / "ws", brief(2)).description == "second"
    assert make(project, queue).propose(project / "ws", brief(1)).description == "first"


def test_exhausted_when_no_ideas_remain(project: Path) -> None:
    agent = make(project, idea("only", "LR = 1e-3", "LR = 2e-3"))
    agent.propose(project / "ws", brief(1))
    with pytest.raises(AgentExhausted):
        agent.propose(project / "ws", brief(2))


def test_bad_search_text_fails_and_the_idea_counts_as_used(project: Path) -> None:
    queue = idea("missing", "LR = 9", "LR = 1") + idea("twice", "=", "==") + idea("ok", "DEPTH = 4", "DEPTH = 5")
    agent = make(project, queue)
    with pytest.raises(AgentFailed, match="not found"):
        agent.propose(project / "ws", brief(1))
    with pytest.raises(AgentFailed, match="found 2 times"):
        agent.propose(project / "ws", brief(2))
    assert agent.propose(project / "ws", brief(3)).description == "ok"


@pytest.mark.parametrize(
    "queue, reason",
    [
        ('[[idea]]\nhypothesis = "h"\n[[idea.edit]]\nfile = "train.py"\ncontent = ""\n', "missing description"),
        ('[[idea]]\ndescription = "no edits"\n', "at least one"),
        ('[[idea]]\ndescription = "d"\n[[idea.edit]]\nfile = "train.py"\nsearch = "LR"\n', "expected"),
        ('[[idea]]\ndescription = "d"\n[[idea.edit]]\nfile = "../x.py"\ncontent = ""\n', "inside the workspace"),
        ('[[idea]]\ndescription = "d"\n[[idea.edit]]\nfile = "nope.py"\nsearch = "a"\nreplace = "b"\n', "no such file"),
    ],
)
def test_malformed_idea_fails_with_a_reason(project: Path, queue: str, reason: str) -> None:
    with pytest.raises(AgentFailed, match=reason):
        make(project, queue).propose(project / "ws", brief(1))


@pytest.mark.parametrize(
    "queue, problem",
    [
        (None, "not found"),
        ("[[idea]\n", "not valid TOML"),
        ('title = "x"\n', "unknown top-level key"),
        ("idea = 3\n", "one or more"),
        ("idea = [1, 2]\n", "not a table"),
    ],
)
def test_bad_queue_file_is_a_usage_error(tmp_path: Path, queue: str | None, problem: str) -> None:
    if queue is not None:
        (tmp_path / "ideas.toml").write_text(queue)
    cfg = Config()
    cfg.path = tmp_path / "nightlab.toml"
    with pytest.raises(UsageError, match=problem) as e:
        ScriptedAgent(cfg, tmp_path / "state")
    assert "ideas.toml" in str(e.value) and "\n" not in str(e.value)


def test_loaded_by_name_with_an_absolute_queue(project: Path) -> None:
    (project / "elsewhere.toml").write_text(idea("abs", "LR = 1e-3", "LR = 5e-3"))
    cfg = Config()
    cfg.agent.queue = str(project / "elsewhere.toml")
    agent = load_agent("scripted", cfg, project / "state")
    assert agent.propose(project / "ws", brief(1)).description == "abs"
