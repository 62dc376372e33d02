"""The API agents' parts that need no server: tool calls read from text, file-tool answers a model can recover from,
and endpoint errors (named, retried or not, stopping a run at start-up or not)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nightlab.agents.filetools import SCHEMAS, FileTools
from nightlab.agents.textcalls import read_calls

TOOLS = {name: list(params) for name, (_, params) in SCHEMAS.items()}
FINISH = ("finish", {"description": "raise LR", "hypothesis": "too low"})


@pytest.mark.parametrize("reply", [
    '{"name": "finish", "arguments": {"description": "raise LR", "hypothesis": "too low"}}',
    'I will finish now.\n\n{"name": "finish", "arguments": {"description": "raise LR", "hypothesis": "too low"}}\n',
    '```json\n{\n  "name": "finish",\n  "arguments": {"description": "raise LR", "hypothesis": "too low"}\n}\n```',
    '<tool_call>\n{"name": "finish", "arguments": {"description": "raise LR", "hypothesis": "too low"}}\n</tool_call>',
    '{{"name": "finish", "arguments": {{"description": "raise LR", "hypothesis": "too low"}}}}',
    'finish(description="raise LR", hypothesis="too low")',
    "Done. finish('raise LR', 'too low')",
    '{"type": "function", "function": {"name": "finish", "arguments": "{\\"description\\": \\"raise LR\\", '
    '\\"hypothesis\\": \\"too low\\"}"}}',
    '[{"name": "finish", "parameters": {"description": "raise LR", "hypothesis": "too low"}}]',
], ids=["bare", "prose-then-json", "fenced", "tool_call-tags", "doubled-braces", "function-line", "positional",
        "openai-shape", "list-parameters"])
def test_each_written_form_is_read_as_the_call(reply: str) -> None:
    assert read_calls(reply, TOOLS) == [FINISH]


def test_code_with_newlines_and_several_calls_in_order() -> None:
    reply = ('<tool_call>\n{"name": "edit_file", "arguments": {"path": "train.py", "old": "LR = 0.1\nEPOCHS = 3",'
             ' "new": "LR = 0.3\nEPOCHS = 3"}}\n</tool_call>\n<tool_call>\n' + '{"name": "finish", "arguments": '
             '{"description": "raise LR", "hypothesis": "too low"}}\n</tool_call>')
    calls = read_calls(reply, TOOLS)
    assert [name for name, _ in calls] == ["edit_file", "finish"]
    assert calls[0][1]["old"] == "LR = 0.1\nEPOCHS = 3"  # raw newlines inside the JSON string, as models write them


def test_prose_and_unknown_tools_are_not_calls() -> None:
    for reply in ["I raised the learning rate to 0.3 because it was too low.",
                  '{"name": "bash", "arguments": {"cmd": "python train.py"}}',
                  "config = {'lr': 0.1}  # and a dict in code", "print(finish)", "finish(",
                  'Use {{"name": "x"}} here.']:
        assert read_calls(reply, TOOLS) == [], reply


def test_doubled_braces_inside_an_ordinary_call_stay() -> None:
    reply = '{"name": "write_file", "arguments": {"path": "scratchpad.md", "content": "f\\"{{x}}\\""}}'
    assert read_calls(reply, TOOLS) == [("write_file", {"path": "scratchpad.md", "content": 'f"{{x}}"'})]


@pytest.fixture
def tools(tmp_path: Path) -> FileTools:
    (tmp_path / "train.py").write_text("import os\n\n# knobs\nLR = 0.1\nBATCH = 32\n\nprint(LR)\n")
    return FileTools(tmp_path, ["train.py"], "scratchpad.md")


def test_finish_before_a_change_is_refused_with_the_reason(tools: FileTools) -> None:
    out, err = tools.call("finish", {"description": "nothing", "hypothesis": "h"})
    assert err and "nothing changed in train.py" in out and "edit_file" in out and tools.finished is None
    tools.call("write_file", {"path": "scratchpad.md", "content": "notes"})  # notes alone are no experiment
    assert tools.call("finish", {"description": "notes", "hypothesis": "h"})[1] and tools.finished is None
    out, err = tools.call("edit_file", {"path": "train.py", "old": "LR = 0.1", "new": "LR = 0.3"})
    assert not err and out.startswith("edited train.py") and "call `finish`" in out
    assert tools.call("finish", {"description": "raise LR", "hypothesis": "h"})[1] is False
    assert tools.finished == ("raise LR", "h")


def test_a_failed_edit_shows_the_closest_lines(tools: FileTools) -> None:
    out, err = tools.call("edit_file", {"path": "train.py", "old": "LR=0.1\nBATCH=32", "new": "LR = 0.3"})
    assert err and "does not occur" in out
    assert "lines are 2-7" in out and "LR = 0.1\nBATCH = 32" in out  # the real text, with context, to copy
    out, err = tools.call("edit_file", {"path": "train.py", "old": "LR", "new": "lr"})
    assert err and "occurs 2 times" in out and "surrounding lines" in out


def test_api_errors_name_the_endpoint_and_say_what_may_be_retried() -> None:
    import httpx2
    import openai

    from nightlab.agents.endpoint import Retry, failure

    def response(status: int, **headers: str) -> httpx2.Response:
        return httpx2.Response(status, headers=headers, request=httpx2.Request("POST", "http://127.0.0.1:9/v1"))

    lost = failure(openai, openai.APIConnectionError(request=httpx2.Request("POST", "http://127.0.0.1:9/v1")),
                   "openai", "http://127.0.0.1:9/v1")
    assert isinstance(lost, Retry) and "cannot reach http://127.0.0.1:9/v1" in str(lost)
    limited = failure(openai, openai.RateLimitError("slow down", response=response(429, **{"retry-after-ms": "250"}),
                                                    body=None), "openai", "w")
    assert isinstance(limited, Retry) and limited.after == 0.25
    bad = failure(openai, openai.BadRequestError("bad", response=response(400), body=None), "openai", "w")
    assert not isinstance(bad, Retry) and str(bad) == "openai API error: 400: bad"


def test_the_start_up_check_stops_only_for_an_endpoint_that_cannot_work() -> None:
    import httpx2
    import openai

    from nightlab.agents.endpoint import unreachable

    request = httpx2.Request("GET", "http://127.0.0.1:9/v1/models")

    def status(cls: type, code: int) -> Exception:
        return cls("no", response=httpx2.Response(code, request=request), body=None)

    down = unreachable(openai, openai.APIConnectionError(request=request), "nightlab.toml: agent.base_url", "http://h")
    assert down is not None and str(down).startswith("nightlab.toml: agent.base_url: cannot reach http://h")
    assert "refused the key" in str(unreachable(openai, status(openai.AuthenticationError, 401), "k", "http://h"))
    # a key that may chat but not list models, or a server without a model list: the run goes on
    assert unreachable(openai, status(openai.PermissionDeniedError, 403), "k", "http://h") is None
    assert unreachable(openai, status(openai.NotFoundError, 404), "k", "http://h") is None
