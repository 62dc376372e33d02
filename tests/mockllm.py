"""A scripted mock model server for tests: real HTTP on 127.0.0.1, stdlib only.

It speaks enough of three wire protocols for the official SDKs and the `claude` / `codex` CLIs:
Anthropic Messages (`POST /v1/messages`, JSON and SSE), OpenAI Chat Completions
(`POST /v1/chat/completions`, JSON and SSE) and the OpenAI Responses API (`POST /v1/responses`, JSON
and SSE). No LLM service is reachable from CI, so this is the one fake the tests allow themselves.

A scenario is a list of replies; the reply for a request is chosen by how many assistant turns the
conversation already holds (so a client that retries a request gets the same reply again). Each reply
is some text and/or tool calls, optionally cut at the client's token limit (`truncated`) or slow (`delay`).
`errors` is a queue of HTTP statuses returned before any scripted reply (e.g. `[429]` for one rate
limit). `models` is what the model list serves (GET /v1/models; one model's lookup answers 404 for any
other); left out, the list is empty and any model is known. Every request is recorded for assertions:
model requests in `requests`, GETs (model lists and lookups) in `lookups`.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from nightlab.agents.keyproxy import LoopbackServer

_ids = itertools.count(1)


@dataclass
class Call:
    name: str
    args: dict[str, Any]


@dataclass
class Reply:
    text: str = ""
    calls: list[Call] = field(default_factory=list)
    tokens_in: int = 100
    tokens_out: int = 20
    truncated: bool = False  # the reply stopped at the client's max_tokens
    delay: float = 0.0  # seconds this reply takes, on top of the server's delay


def text(t: str) -> Reply:
    return Reply(text=t)


def call(name: str, **args: Any) -> Call:
    return Call(name, args)


def tools(*calls: Call, say: str = "") -> Reply:
    return Reply(text=say, calls=list(calls))


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict
    step: int

    @property
    def api_key(self) -> str:
        """The key the client sent, whichever header carried it."""
        bearer = self.headers.get("authorization", "").removeprefix("Bearer ")
        return self.headers.get("x-api-key") or bearer


class MockLLM(LoopbackServer):
    """`with MockLLM([...]) as m:` serves on `m.url`; `m.requests` holds what clients sent."""

    def __init__(self, script: list[Reply] | dict[str, list[Reply]], errors: list[int] | None = None,
                 delay: float = 0.0, models: tuple[str, ...] | None = None) -> None:
        # A dict holds one script per conversation, chosen by a marker the request contains (e.g. the
        # brief's "# Trial 2:" heading), since each trial is a fresh conversation starting at step 0.
        self.scripts = script if isinstance(script, dict) else {"": script}
        self.errors = list(errors or [])
        self.delay = delay  # seconds each reply takes, as a model thinking would
        self.models = models
        self.requests: list[Request] = []
        self.lookups: list[Request] = []
        self.lock = threading.Lock()
        self.serve(_handler(self))

    def reply_for(self, raw: str, step: int) -> Reply:
        script = next((v for k, v in self.scripts.items() if k and k in raw), self.scripts.get("", []))
        # Past the end of the script the model just talks, so a client loop must end by its own caps.
        return script[step] if step < len(script) else text("(the mock has nothing more to say)")

    def tool_results(self) -> list[str]:
        """Every tool result clients sent back, in order (as text), over all recorded requests' last turn."""
        out = []
        for r in self.requests:
            out += _results_in(r)
        return out


# -- request parsing ---------------------------------------------------------------------------------
def _step(path: str, body: dict) -> int:
    """How many assistant turns the conversation already has."""
    if path.endswith("/responses"):
        items = body.get("input")
        if not isinstance(items, list):
            return 0
        turns, inside = 0, False
        for item in items:
            mine = item.get("type") in ("function_call", "reasoning", "custom_tool_call", "local_shell_call") or \
                item.get("role") == "assistant"
            turns += mine and not inside
            inside = mine
        return turns
    return sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")


def _results_in(r: Request) -> list[str]:
    """Tool results the client returned in this request's final user turn."""
    body = r.body
    if r.path.endswith("/responses"):
        items = body.get("input") if isinstance(body.get("input"), list) else []
        tail = []
        for item in reversed(items):
            if item.get("type") != "function_call_output":
                break
            tail.append(str(item.get("output")))
        return tail[::-1]
    msgs = body.get("messages", [])
    if r.path.endswith("/chat/completions"):
        tail = []
        for m in reversed(msgs):
            if m.get("role") != "tool":
                break
            tail.append(str(m.get("content")))
        return tail[::-1]
    last = msgs[-1] if msgs else {}
    if last.get("role") != "user" or not isinstance(last.get("content"), list):
        return []
    out = []
    for block in last["content"]:
        if block.get("type") == "tool_result":
            c = block.get("content")
            flat = c if isinstance(c, str) else " ".join(b.get("text", "") for b in c or [])
            out.append(("ERROR: " if block.get("is_error") else "") + flat)
    return out


# -- response bodies ---------------------------------------------------------------------------------
def _anthropic(reply: Reply, model: str) -> dict:
    content: list[dict] = [{"type": "text", "text": reply.text}] if reply.text else []
    content += [{"type": "tool_use", "id": f"toolu_{next(_ids):06d}", "name": c.name, "input": c.args}
                for c in reply.calls]
    return {"id": f"msg_{next(_ids):06d}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_sequence": None,
            "stop_reason": "max_tokens" if reply.truncated else "tool_use" if reply.calls else "end_turn",
            "usage": {"input_tokens": reply.tokens_in, "output_tokens": reply.tokens_out,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


def _anthropic_events(msg: dict) -> list[tuple[str, dict]]:
    start = {**msg, "content": [], "stop_reason": None, "usage": {**msg["usage"], "output_tokens": 1}}
    events = [("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(msg["content"]):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {**block, "input": {}}}))
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": msg["stop_reason"],
                                                                          "stop_sequence": None},
                                     "usage": {"output_tokens": msg["usage"]["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _chat(reply: Reply, model: str) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.calls:
        message["tool_calls"] = [{"id": f"call_{next(_ids):06d}", "type": "function",
                                  "function": {"name": c.name, "arguments": json.dumps(c.args)}} for c in reply.calls]
    return {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "length" if reply.truncated else "tool_calls" if reply.calls else "stop"}],
            "usage": {"prompt_tokens": reply.tokens_in, "completion_tokens": reply.tokens_out,
                      "total_tokens": reply.tokens_in + reply.tokens_out}}


def _chat_chunks(body: dict) -> list[dict]:
    base = {k: body[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    message, choice = body["choices"][0]["message"], body["choices"][0]
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": message["content"] or ""},
                                    "finish_reason": None}]}]
    for i, tc in enumerate(message.get("tool_calls", [])):
        chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, **tc}]},
                                            "finish_reason": None}]})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
    chunks.append({**base, "choices": [], "usage": body["usage"]})
    return chunks


def _responses(reply: Reply, model: str) -> dict:
    output: list[dict] = []
    if reply.text:
        output.append({"type": "message", "id": f"msg_{next(_ids):06d}", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": reply.text, "annotations": []}]})
    output += [{"type": "function_call", "id": f"fc_{next(_ids):06d}", "call_id": f"call_{next(_ids):06d}",
                "name": c.name, "arguments": json.dumps(c.args), "status": "completed"} for c in reply.calls]
    return {"id": f"resp_{next(_ids):06d}", "object": "response", "created_at": int(time.time()), "status": "completed",
            "model": model, "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "error": None, "incomplete_details": None,
            "usage": {"input_tokens": reply.tokens_in, "output_tokens": reply.tokens_out,
                      "total_tokens": reply.tokens_in + reply.tokens_out,
                      "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}}


def _responses_events(resp: dict) -> list[tuple[str, dict]]:
    pending = {**resp, "status": "in_progress", "output": [], "usage": None}
    events = [("response.created", {"response": pending}), ("response.in_progress", {"response": pending})]
    for i, item in enumerate(resp["output"]):
        events.append(("response.output_item.added", {"output_index": i, "item": {**item, "status": "in_progress"}}))
        if item["type"] == "message":
            events.append(("response.output_text.delta", {"output_index": i, "content_index": 0, "item_id": item["id"],
                                                          "delta": item["content"][0]["text"], "logprobs": []}))
        events.append(("response.output_item.done", {"output_index": i, "item": item}))
    events.append(("response.completed", {"response": resp}))
    return [(name, {"type": name, "sequence_number": n, **data}) for n, (name, data) in enumerate(events)]


# -- the HTTP handler --------------------------------------------------------------------------------
def _handler(mock: MockLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            with mock.lock:
                mock.lookups.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()}, {}, 0))
            path = self.path.split("?")[0].rstrip("/")
            if not path.endswith("/models"):  # one model's lookup (the Anthropic SDK's models.retrieve)
                name = path.rsplit("/", 1)[-1]
                if mock.models is not None and name not in mock.models:
                    return self._json(404, {"type": "error", "error": {"type": "not_found_error",
                                                                       "message": f"model: {name}"}})
                return self._json(200, {"id": name, "type": "model", "display_name": name,
                                        "created_at": "2025-01-01T00:00:00Z"})
            self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "type": "model", "created": 0,
                                                         "owned_by": "mock"} for m in mock.models or ()]})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) or b"{}"
            body = json.loads(raw)
            path = self.path.split("?")[0]
            if path.endswith("/count_tokens"):
                return self._json(200, {"input_tokens": 100})
            step = _step(path, body)
            with mock.lock:
                mock.requests.append(Request(path, {k.lower(): v for k, v in self.headers.items()}, body, step))
                error = mock.errors.pop(0) if mock.errors else None
            if error:
                return self._error(error)
            reply = mock.reply_for(raw.decode(), step)
            time.sleep(mock.delay + reply.delay)  # a slow model, as a client sees it
            model, stream = body.get("model", "mock-model"), bool(body.get("stream"))
            if path.endswith("/v1/messages"):
                msg = _anthropic(reply, model)
                return self._sse(_anthropic_events(msg)) if stream else self._json(200, msg)
            if path.endswith("/chat/completions"):
                done = _chat(reply, model)
                return self._sse([("", c) for c in _chat_chunks(done)], done=True) if stream else self._json(200, done)
            if path.endswith("/responses"):
                resp = _responses(reply, model)
                return self._sse(_responses_events(resp)) if stream else self._json(200, resp)
            self._json(404, {"error": {"type": "not_found", "message": f"no route {path}"}})

        def _error(self, status: int) -> None:
            kind = "rate_limit_error" if status == 429 else "api_error"
            body = {"type": "error", "error": {"type": kind, "message": f"mock {status}", "code": kind}}
            # The SDKs honour retry-after-ms, so retries in tests take milliseconds, not seconds.
            self._json(status, body, {"retry-after-ms": "5", "retry-after": "0"})

        def _json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self._write(data)

        def _write(self, data: bytes) -> None:
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a trial's deadline)
                self.close_connection = True

        def _sse(self, events: list[tuple[str, dict]], done: bool = False) -> None:
            chunks = [(f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n" for name, data in events]
            if done:
                chunks.append("data: [DONE]\n\n")
            data = "".join(chunks).encode()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self._write(data)

    return Handler
