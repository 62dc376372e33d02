"""The `anthropic` agent: the shared tool loop over the Anthropic Messages API (official SDK, an extra).

The endpoint is `[agent] base_url`, else the SDK's own ANTHROPIC_BASE_URL, else Anthropic's API. The key
comes from ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN) and is never written anywhere. The system prompt
and the brief carry `cache_control`, so every turn after the first reads the brief from the prompt cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nightlab.agents import endpoint, require, toolloop
from nightlab.agents.prices import Usage
from nightlab.agents.toolloop import ToolCall, Turn
from nightlab.config import Config
from nightlab.errors import AgentFailed, UsageError

DEFAULT_MODEL = "claude-sonnet-4-5"
CACHED = {"type": "ephemeral"}


class AnthropicAgent(toolloop.ToolLoopAgent):
    def __init__(self, config: Config, state_dir: Path) -> None:
        self.cfg = config
        self.sdk: Any = require("anthropic", "anthropic")
        self.model = config.agent.model or DEFAULT_MODEL
        key = os.environ.get("ANTHROPIC_API_KEY")
        token = os.environ.get("ANTHROPIC_AUTH_TOKEN")
        base = config.agent.base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        if not (key or token or base):
            raise UsageError("agent anthropic: set ANTHROPIC_API_KEY (or [agent] base_url for a keyless endpoint)")
        self.where = base or "https://api.anthropic.com"
        self.source = f"{config.path}: agent.base_url" if config.agent.base_url else \
            "ANTHROPIC_BASE_URL" if base else "agent anthropic"
        # Retries are the tool loop's, within the trial's deadline (endpoint.py).
        self.client = self.sdk.Anthropic(api_key=key or (None if token else "none"), auth_token=token,
                                         base_url=base, max_retries=0, timeout=config.agent.timeout_s)
        a = config.agent
        # in the body's extra fields: this SDK's methods no longer take sampling arguments, the API still does
        sampling = {k: v for k, v in (("temperature", a.temperature), ("top_p", a.top_p), ("top_k", a.top_k))
                    if v is not None}
        self.sampling = {"extra_body": sampling} if sampling else {}

    def probe(self) -> None:
        """Look the model up: an unreachable endpoint or an unknown model is a usage error."""
        try:
            self.client.models.retrieve(self.model, timeout=min(30.0, self.cfg.agent.timeout_s))
        except self.sdk.NotFoundError as e:
            if self.model in str(e):  # not a compatible server without this route, which answers 404 as well
                raise UsageError(f"{self.cfg.path}: agent.model: {self.where} does not know {self.model!r}") from None
        except self.sdk.APIError as e:
            if bad := endpoint.unreachable(self.sdk, e, self.source, self.where):
                raise bad from None

    @property
    def chat_class(self) -> type:
        return _Chat


class _Chat:
    def __init__(self, agent: AnthropicAgent, system: str, brief: str) -> None:
        self.agent = agent
        self.system = [{"type": "text", "text": system, "cache_control": CACHED}]
        self.tools = [{"name": n, "description": d, "input_schema": s} for n, d, s in toolloop.tool_specs()]
        self.messages: list[dict] = [{"role": "user", "content": [{"type": "text", "text": brief,
                                                                   "cache_control": CACHED}]}]

    def send(self, timeout: float) -> Turn:
        a = self.agent
        try:
            with a.client.messages.stream(model=a.model, max_tokens=a.cfg.agent.reply_tokens, system=self.system,
                                          tools=self.tools, messages=self.messages, timeout=timeout,
                                          **a.sampling) as stream:
                msg = stream.get_final_message()
        except a.sdk.APIError as e:
            raise endpoint.failure(a.sdk, e, "anthropic", a.where) from None
        content, calls, said = [], [], []
        for block in msg.content:
            if block.type == "text":
                content.append({"type": "text", "text": block.text})
                said.append(block.text)
            elif block.type == "tool_use":
                content.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
                calls.append(ToolCall(block.id, block.name, toolloop.parse_args(block.input)))
        if not content:
            raise AgentFailed(f"the model sent an empty reply (stop_reason {msg.stop_reason})")
        self.messages.append({"role": "assistant", "content": content})
        u = msg.usage
        read, write = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
        usage = Usage(tokens_in=u.input_tokens + read + write, tokens_out=u.output_tokens, cache_read=read,
                      cache_write=write)
        return Turn("\n".join(said), calls, usage, truncated=msg.stop_reason == "max_tokens")

    def results(self, results: list[tuple[ToolCall, str, bool]]) -> None:
        self.messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": c.id, "content": out, "is_error": err} for c, out, err in results]})

    def say(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

