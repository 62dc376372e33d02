"""The API agents with what small local models do, through the real CLI against the mock model server: tool calls
written as text, a finish before any change, a failed edit, a reply cut at reply_tokens, a slow model past the
trial's deadline, a bad endpoint at start-up, and a model changed between sessions without a commit."""

from __future__ import annotations

import json
import socket

import pytest

from mockllm import MockLLM, Reply, call, text, tools
from nlkit import one_line_error

FENCED_BAD_EDIT = 'I will raise the learning rate.\n```json\n{"name": "edit_file", "arguments": ' \
                  '{"path": "train.py", "old": "LR=0.1", "new": "LR = 0.3"}}\n```'
TAGGED_EDIT = '<tool_call>\n{"name": "edit_file", "arguments": {"path": "train.py", "old": "LR = 0.1", ' \
              '"new": "LR = 0.3"}}\n</tool_call>'
DOUBLED_FINISH = '{{"name": "finish", "arguments": {{"description": "raise LR to 0.3", "hypothesis": "too low"}}}}'


def api_project(new_project, agent: str, url: str, sub: str = "", **agent_cfg: object):
    cfg = {"agent": {"name": agent, "base_url": url + ("/v1" if agent == "openai" else ""), "model": "local-model",
                     **agent_cfg}}
    key = "OPENAI_API_KEY" if agent == "openai" else "ANTHROPIC_API_KEY"
    return new_project(sub=sub, config=cfg, extra_env={key: "sk-test-key"})


def test_calls_written_as_text_refusals_and_a_cut_reply(new_project) -> None:
    script = {
        # written calls only: a fenced edit that misses (answered with the closest lines), a tagged one, a finish
        # in a chat template's doubled braces → runs and is kept
        "# Trial 1:": [text(FENCED_BAD_EDIT), text(TAGGED_EDIT), text(DOUBLED_FINISH)],
        # finish before any change is refused and the trial goes on; a function-call line then edits
        "# Trial 2:": [tools(call("finish", description="nothing yet", hypothesis="h")),
                       text('edit_file(path="train.py", old="BONUS = 0.0", new="BONUS = 0.01")'),
                       tools(call("finish", description="a small bonus", hypothesis="h"))],
        # prose cut at reply_tokens, twice: one nudge that says so, then the trial fails and says why
        "# Trial 3:": [Reply(text="Let me rewrite the whole training loop so that", truncated=True),
                       Reply(text="First, the imports", truncated=True)],
    }
    with MockLLM(script) as mock:
        proj = api_project(new_project, "openai", mock.url, reply_tokens=64, temperature=0.2, top_p=0.9, top_k=20)
        proj.run("--max-trials", "3")
    rows = proj.ledger()
    assert [r["status"] for r in rows] == ["baseline", "keep", "keep", "rejected"]
    assert rows[1]["description"] == "raise LR to 0.3" and rows[2]["description"] == "a small bonus"
    assert rows[3]["reason"] == "the model stopped without calling finish (its last reply was cut at reply_tokens 64)"
    log1 = (proj.state() / "runs" / "1" / "agent.log").read_text()
    assert log1.count("(recovered from the reply's text: ") == 3
    said = [m["content"] for r in mock.requests for m in r.body["messages"] if m["role"] == "user"]
    # the failed edit was answered with the lines to copy; the results of written calls go back as messages
    assert any("`old` does not occur in train.py" in s and "LR = 0.1\nBONUS = 0.0" in s for s in said)
    results = mock.tool_results()
    assert any("nothing changed in train.py" in r and "edit_file" in r for r in results)
    assert any(s.startswith("Your reply was cut at 64 tokens") and "finish" in s for s in said)
    first = mock.requests[0].body
    assert (first["temperature"], first["top_p"], first["top_k"], first["max_tokens"]) == (0.2, 0.9, 20, 64)
    brief = first["messages"][1]["content"]
    assert brief == (proj.state() / "runs" / "1" / "brief.md").read_text()
    assert "### train.py" in brief and "BONUS = 0.0" in brief  # the small editable file is in the brief
    assert brief.rsplit("## ", 1)[1].startswith("Reply\n\nAnswer with tool calls") and "`finish`" in brief[-400:]
    # agent seconds, for every trial (the rejected one too), everywhere a user looks
    log = proj.log_json()
    assert all(t["agent_seconds"] > 0 for t in log[1:]) and log[0]["agent_seconds"] == 0
    assert all(t["agent"] == f"openai local-model @ {mock.url}/v1" for t in log[1:])
    tsv = [line.split("\t") for line in (proj.state() / "results.tsv").read_text().splitlines()]
    col = tsv[0].index("agent_seconds")
    assert [float(r[col]) for r in tsv[1:]] == [pytest.approx(t["agent_seconds"], abs=0.05) for t in log]
    status = proj.status_json()
    assert status["agent_seconds"] == pytest.approx(sum(t["agent_seconds"] for t in log))
    assert "min of the agent" in proj.nl("status", "--tag", "t").stdout
    report = proj.nl("report", "--tag", "t")
    assert report.returncode == 0 and "h of the agent" in (proj.state() / "report.html").read_text()


def test_a_slow_model_is_stopped_at_the_trials_deadline(new_project) -> None:
    # Each reply takes a minute; timeout_s bounds the whole proposal (every retry included), not one request.
    with MockLLM([tools(call("read_file", path="train.py"), say="")] * 3, delay=60) as mock:
        proj = api_project(new_project, "anthropic", mock.url, timeout_s=2, max_retries=3, temperature=0.5)
        proj.run("--max-trials", "1")
    rec = proj.trial(1)
    assert rec["status"] == "rejected" and rec["reason"].startswith("no finish within timeout_s (2 s)")
    assert 2 <= rec["agent_seconds"] < 30  # far below the minute one reply would take, retries or not
    assert len(mock.requests) == 1 and mock.requests[0].body["temperature"] == 0.5


def test_an_unreachable_endpoint_or_unknown_model_stops_before_the_baseline(new_project) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    proj = api_project(new_project, "openai", closed)
    line = one_line_error(proj.nl("run", "--tag", "t", "--max-trials", "1"))
    assert "agent.base_url" in line and f"cannot reach {closed}/v1" in line
    assert not (proj.state() / "ledger.sqlite").exists()
    with MockLLM([], models=("qwen2.5-coder:7b", "llama3.1:8b")) as mock:
        (proj.dir / "nightlab.toml").write_text((proj.dir / "nightlab.toml").read_text().replace(closed, mock.url))
        line = one_line_error(proj.nl("run", "--tag", "t", "--max-trials", "1"))
        assert "agent.model" in line and "'local-model'" in line and "qwen2.5-coder:7b" in line
        assert mock.requests == []  # only the model list was asked for
    assert not (proj.state() / "ledger.sqlite").exists()
    with MockLLM([], models=("claude-x",)) as mock:
        proj = api_project(new_project, "anthropic", mock.url, sub="a")
        line = one_line_error(proj.nl("run", "--tag", "t", "--max-trials", "1"))
        assert "agent.model" in line and "does not know 'local-model'" in line


def test_the_model_and_endpoint_change_without_a_commit(new_project) -> None:
    edit = [tools(call("edit_file", path="train.py", old="LR = 0.1", new="LR = 0.3"),
                  call("finish", description="raise LR", hypothesis="h"))]
    with MockLLM({"# Trial 1:": edit}) as first, MockLLM([text("nothing to add")]) as second:
        proj = api_project(new_project, "openai", first.url, model="small")
        proj.run("--max-trials", "1")
        toml = proj.dir / "nightlab.toml"
        toml.write_text(toml.read_text().replace('"small"', '"bigger"').replace(first.url, second.url))
        proj.run("--max-trials", "2")  # the same tag, its next session: nothing committed
        proj.run("--max-trials", "0", tag="u")  # a new tag starts with the same uncommitted endpoint change
        assert [r.body["model"] for r in second.requests] == ["bigger", "bigger"]
        toml.write_text(toml.read_text().replace("budget_s = 1", "budget_s = 2"))  # what a trial measures: refused
        assert "uncommitted changes (nightlab.toml)" in one_line_error(proj.nl("run", "--tag", "v"))
    agents = [t["agent"] for t in proj.log_json()]
    assert agents == ["", f"openai small @ {first.url}/v1", f"openai bigger @ {second.url}/v1"]
    assert json.loads(proj.nl("log", "--tag", "u", "--json").stdout)[0]["status"] == "baseline"
