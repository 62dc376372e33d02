"""The tool-use loop shared by the API agents (anthropic, openai): one conversation per trial over the file tools.

A trial is bounded as a whole: `[agent] timeout_s` is a deadline for the proposal, every request and every
retry included (each request may take only what is left of it), beside the caps on turns and tokens.
Replies that carry no structured tool call are read for calls written as text (textcalls), which small
local models produce whatever the server's parser makes of them; a reply with neither gets one
corrective message naming the tools, and the trial fails if the next one has none either.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from nightlab.agents import Agent
from nightlab.agents.endpoint import Retry
from nightlab.agents.filetools import SCHEMAS, FileTools, parse_args, tool_specs
from nightlab.agents.prices import Usage, cost, price_for
from nightlab.agents.textcalls import read_calls
from nightlab.config import Config
from nightlab.errors import AgentFailed
from nightlab.types import Brief, Proposal

__all__ = ["Chat", "FileTools", "ToolCall", "ToolLoopAgent", "Turn", "parse_args", "run", "system_prompt",
           "tool_specs"]
log = logging.getLogger("nightlab")

_once = threading.Lock()  # slots may ask for proposals at once: the price is still said once
BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0  # retry pauses when the server names none: 1, 2, 4, ... s

SYSTEM = """You are the research agent of an automated experiment loop (nightlab). Each time you are called
you make exactly ONE experiment: edit the editable files to try one idea, update the scratchpad with
what you tried and why, then {end}.

Rules, enforced by the harness:
- You may change only these files: {allowed}. Any other write is refused, and a trial that changes
  another file is rejected.
- You cannot run code. The harness trains your change with a fixed budget, measures it, and keeps it
  only if it beats the best by more than the noise; otherwise it is reverted.
{last}
"""
# How an API agent's trial ends: the system prompt's part and the brief's closing section (program.brief puts
# it last, since small models do what the last paragraph says).
END = "call `finish` with a one-line description and a one-sentence hypothesis"
LAST = """- Read the files you need first (the brief may already show them); `edit_file` replaces one exact, unique
  occurrence of a string.
- Always end by calling `finish`. Ending without it wastes the trial."""
REPLY = """Answer with tool calls, not prose. Make your one change with `edit_file` (or `write_file`), add a line \
to the scratchpad, then call `finish` with `description` (one line: what you changed) and `hypothesis` (one \
sentence: why it should help). The trial is run only once `finish` is called after a change to an \
editable file."""
NUDGE = ("You have not called a tool. Reply with a tool call: one of {tools}. Make your edit with `edit_file` if "
         "you have not, then call `finish`. If tool calls do not work for you, write the call as JSON alone, e.g. "
         '{{"name": "finish", "arguments": {{"description": "...", "hypothesis": "..."}}}}')
CUT = "Your reply was cut at {n} tokens (reply_tokens): keep replies short, one small edit per call."


def system_prompt(cfg: Config, end: str = END, last: str = LAST) -> str:
    return SYSTEM.format(allowed=", ".join([*cfg.project.editable, cfg.project.scratchpad]), end=end, last=last)


@dataclass
class ToolCall:
    id: str
    name: str
    args: dict[str, Any] | None  # None: the model sent arguments that are not a JSON object


@dataclass
class Turn:
    text: str
    calls: list[ToolCall]
    usage: Usage = field(default_factory=Usage)
    truncated: bool = False  # the reply stopped at reply_tokens


class Chat(Protocol):
    """One conversation with a model, in the provider's own wire format."""

    def send(self, timeout: float) -> Turn:
        """Ask for the next assistant turn (appended to the conversation) within `timeout` seconds; raise
        endpoint.Retry when sending it again may help, AgentFailed on other API errors."""
        ...

    def results(self, results: list[tuple[ToolCall, str, bool]]) -> None: ...

    def say(self, text: str) -> None: ...


class ToolLoopAgent(Agent):
    """What the API agents share. Subclasses set `cfg`, `model`, `chat_class` (a `Chat` built from the agent, the
    system prompt and the brief) and `probe()`, the start-up request that raises UsageError for a bad endpoint."""

    cfg: Config
    model: str
    concurrent = True  # each proposal is its own conversation over its own worktree: slots may ask at once
    reply: ClassVar[str] = REPLY

    @property
    def chat_class(self) -> type:
        raise NotImplementedError

    def probe(self) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Before a run: the endpoint answers and knows the model. A model without a price is said at its first
        proposal (once per run; not before, where a usage error must stay the only line)."""
        self.probe()
        self.unpriced = price_for(self.model, self.cfg.agent.prices) is None

    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        with _once:
            say, self.unpriced = getattr(self, "unpriced", False), False
        if say:
            log.warning("no price for model %r: its tokens count as $0 (set [agent] prices to change that)", self.model)
        tools = FileTools(workspace, brief.editable, self.cfg.project.scratchpad)
        chat = self.chat_class(self, system_prompt(self.cfg), brief.text)
        return run(chat, tools, self.cfg, self.model, brief)

    def observe(self, trial: int, status: object, metric: float | None) -> None:
        """Nothing to learn between trials: the brief and the scratchpad carry the memory."""


class _Trial:
    """One proposal's accounts: tokens, transcript, deadline; and how it ends."""

    def __init__(self, cfg: Config, model: str, brief: Brief) -> None:
        self.cfg, self.model = cfg, model
        self.usage, self.log = Usage(), [f"# trial {brief.trial}: {model}"]
        self.deadline = time.monotonic() + cfg.agent.timeout_s
        self.cut = False  # the last reply stopped at reply_tokens

    def send(self, chat: Chat) -> Turn:
        """The next turn, retrying what may pass, all within the deadline."""
        timeout_s, retries = self.cfg.agent.timeout_s, self.cfg.agent.max_retries
        for attempt in range(retries + 1):
            left = self.deadline - time.monotonic()
            if left <= 0:
                break
            try:
                return chat.send(left)
            except Retry as e:
                pause = e.after if e.after is not None else min(BACKOFF_S * 2 ** attempt, MAX_BACKOFF_S)
                if time.monotonic() + pause >= self.deadline:
                    raise self.fail(f"no finish within timeout_s ({timeout_s:g} s); last: {e}") from None
                if attempt == retries:
                    raise self.fail(str(e)) from None
                self.log.append(f"({e}; again in {pause:.1f} s)")
                time.sleep(pause)  # a back-off the server asked for, or ours
            except AgentFailed as e:
                raise self.fail(str(e)) from None
        raise self.fail(f"no finish within timeout_s ({timeout_s:g} s)")

    def fail(self, reason: str) -> AgentFailed:
        """An AgentFailed that still carries what the attempt cost, so failed trials are charged too."""
        if self.cut:
            reason += f" (its last reply was cut at reply_tokens {self.cfg.agent.reply_tokens})"
        self.log.append(f"\nFAILED: {reason}")
        err = AgentFailed(reason)
        err.proposal = Proposal(description="", tokens_in=self.usage.tokens_in, tokens_out=self.usage.tokens_out,
                                cost_usd=self.dollars(), transcript="\n".join(self.log) + "\n")
        return err

    def proposal(self, tools: FileTools) -> Proposal:
        assert tools.finished
        if tools.refused:
            self.log.append(f"\nrefused writes: {', '.join(tools.refused)}")
        u = self.usage
        self.log.append(f"\ntokens: {u.tokens_in} in ({u.cache_read} cached), {u.tokens_out} out")
        return Proposal(description=tools.finished[0], hypothesis=tools.finished[1], tokens_in=u.tokens_in,
                        tokens_out=u.tokens_out, cost_usd=self.dollars(), transcript="\n".join(self.log) + "\n")

    def dollars(self) -> float:
        return cost(self.model, self.usage, self.cfg.agent.prices) or 0.0  # an unknown price: said once, by check()


def run(chat: Chat, tools: FileTools, cfg: Config, model: str, brief: Brief) -> Proposal:
    """Drive `chat` until the model calls finish after a change, or a cap is reached (AgentFailed, usage attached)."""
    t = _Trial(cfg, model, brief)
    nudged = False
    for turn_no in range(1, cfg.agent.max_turns + 1):
        turn = t.send(chat)
        t.usage.add(turn.usage)
        t.cut = turn.truncated
        cut = " cut at reply_tokens" if turn.truncated else ""
        t.log.append(f"\n## turn {turn_no} ({turn.usage.tokens_in} in, {turn.usage.tokens_out} out{cut})")
        if turn.text:
            t.log.append(turn.text)
        if t.usage.total > cfg.agent.max_tokens:
            raise t.fail(f"token cap reached ({t.usage.total} > max_tokens {cfg.agent.max_tokens})")
        calls, written = turn.calls, not turn.calls
        if written:
            calls = [ToolCall(f"text-{turn_no}-{i}", name, args) for i, (name, args) in
                     enumerate(read_calls(turn.text, {n: list(p) for n, (_, p) in SCHEMAS.items()}))]
            if calls:
                t.log.append(f"(recovered from the reply's text: {', '.join(c.name for c in calls)})")
        if not calls:
            if nudged:
                raise t.fail("the model stopped without calling finish")
            nudged = True
            tip = CUT.format(n=cfg.agent.reply_tokens) + " " if turn.truncated else ""
            chat.say(tip + NUDGE.format(tools=", ".join(SCHEMAS)))
            continue
        results = []
        for c in calls:
            out, err = tools.call(c.name, c.args)
            t.log.append(f"-> {c.name} {json.dumps(c.args)[:300]}\n<- {'ERROR ' if err else ''}{out[:300]}")
            results.append((c, out, err))
        if tools.finished:
            return t.proposal(tools)
        if written:  # the conversation holds no structured call to answer: the results go back as a message
            chat.say("\n\n".join(f"Result of your {c.name} call:\n{out}" for c, out, _ in results))
        else:
            chat.results(results)
    raise t.fail(f"no finish after {cfg.agent.max_turns} turns (max_turns)")
