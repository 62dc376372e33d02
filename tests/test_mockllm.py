"""The mock model server itself, driven by the real anthropic and openai SDKs (JSON and streaming)."""

from __future__ import annotations

import anthropic
import openai
import pytest

from mockllm import MockLLM, call, text, tools

SCRIPT = [tools(call("read_file", path="train.py"), say="let me look"), text("done")]
SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}}
TOOL = {"name": "read_file", "description": "read", "input_schema": SCHEMA}
FN = {"type": "function", "function": {"name": "read_file", "parameters": TOOL["input_schema"]}}


def test_anthropic_messages_json_and_stream() -> None:
    with MockLLM(SCRIPT) as m:
        client = anthropic.Anthropic(api_key="k", base_url=m.url, max_retries=0)
        msgs = [{"role": "user", "content": "hi"}]
        first = client.messages.create(model="mock-model", max_tokens=100, messages=msgs, tools=[TOOL])
        assert first.stop_reason == "tool_use"
        use = next(b for b in first.content if b.type == "tool_use")
        assert (use.name, use.input) == ("read_file", {"path": "train.py"})
        msgs += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "LR = 1"}]}]
        with client.messages.stream(model="mock-model", max_tokens=100, messages=msgs, tools=[TOOL]) as s:
            final = s.get_final_message()
        assert final.stop_reason == "end_turn" and final.content[0].text == "done"
        assert [r.step for r in m.requests] == [0, 1]
        assert m.tool_results() == ["LR = 1"]
        assert m.requests[0].api_key == "k"


def test_openai_chat_json_and_stream() -> None:
    with MockLLM(SCRIPT) as m:
        client = openai.OpenAI(api_key="k", base_url=m.url + "/v1", max_retries=0)
        msgs = [{"role": "user", "content": "hi"}]
        first = client.chat.completions.create(model="mock-model", messages=msgs, tools=[FN])
        tc = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls" and tc.function.name == "read_file"
        msgs += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": tc.id, "content": "LR = 1"}]
        chunks = list(client.chat.completions.create(model="mock-model", messages=msgs, tools=[FN], stream=True,
                                                     stream_options={"include_usage": True}))
        said = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert said == "done" and chunks[-1].usage.completion_tokens == 20
        assert m.tool_results() == ["LR = 1"]


def test_openai_responses_json_and_stream() -> None:
    with MockLLM(SCRIPT) as m:
        client = openai.OpenAI(api_key="k", base_url=m.url + "/v1", max_retries=0)
        fn = {"type": "function", "name": "read_file", "parameters": TOOL["input_schema"]}
        first = client.responses.create(model="mock-model", input="hi", tools=[fn])
        fc = next(o for o in first.output if o.type == "function_call")
        assert fc.name == "read_file" and first.output_text == "let me look"
        items = [{"role": "user", "content": "hi"}, *[o.model_dump(exclude_none=True) for o in first.output],
                 {"type": "function_call_output", "call_id": fc.call_id, "output": "LR = 1"}]
        with client.responses.stream(model="mock-model", input=items, tools=[fn]) as s:
            final = s.get_final_response()
        assert final.output_text == "done"
        assert [r.step for r in m.requests] == [0, 1] and m.tool_results() == ["LR = 1"]


def test_scripted_errors_then_success() -> None:
    with MockLLM([text("ok")], errors=[429, 500]) as m:
        client = anthropic.Anthropic(api_key="k", base_url=m.url, max_retries=2)
        reply = client.messages.create(model="mock-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert reply.content[0].text == "ok" and len(m.requests) == 3


def test_500_after_retries_raises() -> None:
    with MockLLM([text("ok")], errors=[500, 500]) as m:
        client = openai.OpenAI(api_key="k", base_url=m.url + "/v1", max_retries=1)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "hi"}])
        assert len(m.requests) == 2
