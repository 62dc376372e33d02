"""The `openai` agent: the shared tool loop over the Chat Completions API (official SDK, an extra).

Chat Completions is what OpenAI-compatible servers speak, so with `[agent] base_url` this agent drives
Ollama, vLLM, llama.cpp's server, LM Studio or OpenRouter as well as OpenAI. The endpoint is
`[agent] base_url`, else the SDK's own OPENAI_BASE_URL, else OpenAI's API; the key comes from
OPENAI_API_KEY (a local server needs none). OpenAI caches long prompt prefixes by itself; the cached
tokens it reports are priced as cache reads.
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

DEFAULT_MODEL = "gpt-5"


class OpenAIAgent(toolloop.ToolLoopAgent):
    def __init__(self, config: Config, state_dir: Path) -> None:
        self.cfg = config
        self.sdk: Any = require("openai", "openai")
        self.model = config.agent.model or DEFAULT_MODEL
        key = os.environ.get("OPENAI_API_KEY")
        self.base = config.agent.base_url or os.environ.get("OPENAI_BASE_URL") or None
        if not (key or self.base):
            raise UsageError("agent openai: set OPENAI_API_KEY (or [agent] base_url for a local server such as Ollama)")
        self.where = self.base or "https://api.openai.com/v1"
        # the key that names the endpoint in errors: the config's, else the SDK's variable
        self.source = f"{config.path}: agent.base_url" if config.agent.base_url else \
            "OPENAI_BASE_URL" if self.base else "agent openai"
        # Local servers ignore the key, but the SDK insists on one. Retries are the tool loop's (endpoint.py).
        self.client = self.sdk.OpenAI(api_key=key or "local", base_url=self.base, max_retries=0,
                                      timeout=config.agent.timeout_s)
        a = config.agent
        self.sampling: dict[str, Any] = {k: v for k, v in (("temperature", a.temperature), ("top_p", a.top_p))
                                         if v is not None}
        if a.top_k is not None:
            self.sampling["extra_body"] = {"top_k": a.top_k}

    def probe(self) -> None:
        """List the served models: an unreachable endpoint or a model it does not list is a usage error."""
        try:
            models = list(self.client.models.list(timeout=min(30.0, self.cfg.agent.timeout_s)))
            ids = [name for m in models for name in [m.id, *(getattr(m, "aliases", None) or [])]]  # llama.cpp: aliases
        except self.sdk.APIError as e:
            if bad := endpoint.unreachable(self.sdk, e, self.source, self.where):
                raise bad from None
            return  # a server without a model list: the first request will say what is wrong
        if ids and not endpoint.listed(self.model, ids):
            raise UsageError(f"{self.cfg.path}: agent.model: {self.where} does not serve {self.model!r} "
                             f"(it lists {', '.join(ids[:8])}{', ...' if len(ids) > 8 else ''})")

    @property
    def chat_class(self) -> type:
        return _Chat


class _Chat:
    def __init__(self, agent: OpenAIAgent, system: str, brief: str) -> None:
        self.agent = agent
        self.tools = [{"type": "function", "function": {"name": n, "description": d, "parameters": s}}
                      for n, d, s in toolloop.tool_specs()]
        self.messages: list[dict] = [{"role": "system", "content": system}, {"role": "user", "content": brief}]
        # OpenAI's own newer models refuse `max_tokens`; compatible servers mostly know only that name.
        self.cap = "max_tokens" if agent.base else "max_completion_tokens"

    def send(self, timeout: float) -> Turn:
        a = self.agent
        try:
            done = a.client.chat.completions.create(model=a.model, messages=self.messages, tools=self.tools,
                                                    timeout=timeout, **{self.cap: a.cfg.agent.reply_tokens},
                                                    **a.sampling)
        except a.sdk.APIError as e:
            raise endpoint.failure(a.sdk, e, "openai", a.where) from None
        if not done.choices:
            raise AgentFailed("the model sent a reply with no choices")
        msg = done.choices[0].message
        calls = [ToolCall(tc.id, tc.function.name, toolloop.parse_args(tc.function.arguments))
                 for tc in (msg.tool_calls or []) if getattr(tc, "function", None)]
        entry: dict[str, Any] = {"role": "assistant", "content": msg.content or ""}
        if msg.tool_calls:
            entry["tool_calls"] = [{"id": tc.id, "type": "function",
                                    "function": {"name": tc.function.name, "arguments": tc.function.arguments}}
                                   for tc in msg.tool_calls if getattr(tc, "function", None)]
        self.messages.append(entry)
        u = done.usage
        details = getattr(u, "prompt_tokens_details", None) if u else None
        usage = Usage(tokens_in=u.prompt_tokens if u else 0, tokens_out=u.completion_tokens if u else 0,
                      cache_read=(getattr(details, "cached_tokens", 0) or 0) if details else 0)
        return Turn(msg.content or "", calls, usage, truncated=done.choices[0].finish_reason == "length")

    def results(self, results: list[tuple[ToolCall, str, bool]]) -> None:
        self.messages += [{"role": "tool", "tool_call_id": c.id, "content": out} for c, out, _ in results]

    def say(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

