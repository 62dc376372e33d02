"""The tool-use loop shared by the API agents (anthropic, openai): file tools confined to an allowlist.

The model sees five tools. Reads may look at any file in the workspace (it needs to read prepare.py to
understand the evaluation); writes reach only the editable files and the scratchpad. A path outside the
allowlist is answered with an error for the model and never touches the disk. The harness checks the
diff afterwards anyway (workspace.verify_edits); this layer makes a refused edit cheap and visible.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nightlab.agents import Agent
from nightlab.agents.prices import Usage, cost
from nightlab.config import Config
from nightlab.errors import AgentFailed
from nightlab.types import Brief, Proposal

MAX_READ = 200_000  # characters of one file shown to the model
MAX_LIST = 400  # files listed

SYSTEM = """You are the research agent of an automated experiment loop (nightlab). Each time you are called
you make exactly ONE experiment: edit the editable files to try one idea, update the scratchpad with
what you tried and why, then call `finish` with a one-line description and a one-sentence hypothesis.

Rules, enforced by the harness:
- You may change only these files: {allowed}. Any other write is refused, and a trial that changes
  another file is rejected.
- You cannot run code. The harness trains your change with a fixed budget, measures it, and keeps it
  only if it beats the best by more than the noise; otherwise it is reverted.
- Read the files you need first; `edit_file` replaces one exact, unique occurrence of a string.
- Always end by calling `finish`. Ending without it wastes the trial.
"""
NUDGE = "You have not called `finish`. Make your edit if you have not, then call `finish(description, hypothesis)`."

SCHEMAS: dict[str, tuple[str, dict[str, str]]] = {
    "read_file": ("Read a file of the project (path relative to the project directory).", {"path": "file path"}),
    "list_files": ("List the files of the project.", {}),
    "edit_file": ("Replace one exact occurrence of `old` with `new` in an editable file; `old` must occur once.",
                  {"path": "file path", "old": "the exact text to replace", "new": "the replacement text"}),
    "write_file": ("Write the whole content of an editable file (or the scratchpad).",
                   {"path": "file path", "content": "the new content"}),
    "finish": ("End this trial: a one-line description of the change and why it should help.",
               {"description": "one line: what you changed", "hypothesis": "one sentence: why it should help"}),
}


def tool_specs() -> list[tuple[str, str, dict]]:
    """(name, description, JSON schema) for each tool, for the adapters to wrap."""
    specs = []
    for name, (doc, params) in SCHEMAS.items():
        schema = {"type": "object", "properties": {k: {"type": "string", "description": v} for k, v in params.items()},
                  "required": list(params)}
        specs.append((name, doc, schema))
    return specs


class ToolError(Exception):
    """Shown to the model as an error result; the trial goes on."""


class FileTools:
    def __init__(self, workspace: Path, editable: list[str], scratchpad: str) -> None:
        self.root = workspace.resolve()
        self.writable = [*editable, scratchpad]
        self.finished: tuple[str, str] | None = None
        self.refused: list[str] = []

    def call(self, name: str, args: dict[str, Any] | None) -> tuple[str, bool]:
        """Run one tool call: (result text, is_error)."""
        try:
            if args is None:
                raise ToolError("the arguments are not a valid JSON object")
            fn = getattr(self, f"t_{name}", None) if name in SCHEMAS else None
            if fn is None:
                raise ToolError(f"no tool {name!r} (tools: {', '.join(SCHEMAS)})")
            unknown = set(args) - set(SCHEMAS[name][1])
            missing = [k for k in SCHEMAS[name][1] if not isinstance(args.get(k), str)]
            if unknown or missing:
                raise ToolError(f"{name} takes string arguments {', '.join(SCHEMAS[name][1]) or '(none)'}")
            return fn(**args), False
        except ToolError as e:
            return f"error: {e}", True

    def _rel(self, path: str) -> str:
        p = Path(path)
        full = (p if p.is_absolute() else self.root / p).resolve()
        if not full.is_relative_to(self.root) or full == self.root:
            raise ToolError(f"{path}: outside the project")
        rel = full.relative_to(self.root).as_posix()
        if rel.split("/")[0] == ".git":
            raise ToolError(f"{path}: not a project file")
        return rel

    def _writable(self, path: str) -> Path:
        rel = self._rel(path)
        if rel not in self.writable:
            self.refused.append(rel)
            raise ToolError(f"{rel} may not be changed (editable: {', '.join(self.writable)})")
        return self.root / rel

    def t_read_file(self, path: str) -> str:
        full = self.root / self._rel(path)
        if not full.is_file():
            raise ToolError(f"{path}: no such file")
        text = full.read_text(errors="replace")
        return text if len(text) <= MAX_READ else text[:MAX_READ] + f"\n[… cut at {MAX_READ} characters]"

    def t_list_files(self) -> str:
        out = []
        for d, dirs, files in os.walk(self.root):
            dirs[:] = sorted(x for x in dirs if not x.startswith(".") and x != "__pycache__")
            out += [(Path(d) / f).relative_to(self.root).as_posix() for f in sorted(files)]
            if len(out) > MAX_LIST:
                return "\n".join(out[:MAX_LIST]) + "\n[… more files not shown]"
        return "\n".join(out)

    def t_edit_file(self, path: str, old: str, new: str) -> str:
        full = self._writable(path)
        if not full.is_file():
            raise ToolError(f"{path}: no such file (use write_file to create the scratchpad)")
        text = full.read_text()
        count = text.count(old) if old else 0
        if count != 1:
            raise ToolError(f"`old` occurs {count} times in {path}; it must occur exactly once")
        full.write_text(text.replace(old, new))
        return f"edited {path}"

    def t_write_file(self, path: str, content: str) -> str:
        full = self._writable(path)
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(content)
        return f"wrote {path} ({len(content.splitlines())} lines)"

    def t_finish(self, description: str, hypothesis: str) -> str:
        if not description.strip():
            raise ToolError("description must not be empty")
        self.finished = (" ".join(description.split()), " ".join(hypothesis.split()))
        return "recorded; the harness will now run your change"


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


class Chat(Protocol):
    """One conversation with a model, in the provider's own wire format."""

    def send(self) -> Turn:
        """Ask for the next assistant turn (appended to the conversation); raise AgentFailed on API errors."""
        ...

    def results(self, results: list[tuple[ToolCall, str, bool]]) -> None: ...

    def say(self, text: str) -> None: ...


def parse_args(raw: str | dict | None) -> dict[str, Any] | None:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class ToolLoopAgent(Agent):
    """What the API agents share: one fresh conversation per trial over the file tools.

    Subclasses set `cfg`, `model` and `chat_class` (a `Chat` built from the agent, the system prompt and the brief).
    """

    cfg: Config
    model: str
    concurrent = True  # each proposal is its own conversation over its own worktree: slots may ask at once

    @property
    def chat_class(self) -> type:
        raise NotImplementedError

    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        tools = FileTools(workspace, brief.editable, self.cfg.project.scratchpad)
        chat = self.chat_class(self, system_prompt(self.cfg), brief.text)
        return run(chat, tools, self.cfg, self.model, brief)

    def observe(self, trial: int, status: object, metric: float | None) -> None:
        """Nothing to learn between trials: the brief and the scratchpad carry the memory."""


def system_prompt(cfg: Config) -> str:
    return SYSTEM.format(allowed=", ".join([*cfg.project.editable, cfg.project.scratchpad]))


def run(chat: Chat, tools: FileTools, cfg: Config, model: str, brief: Brief) -> Proposal:
    """Drive `chat` until the model calls finish, or a cap is reached (AgentFailed, usage attached)."""
    usage, log = Usage(), [f"# trial {brief.trial}: {model}"]
    nudged = False
    for turn_no in range(1, cfg.agent.max_turns + 1):
        try:
            turn = chat.send()
        except AgentFailed as e:
            raise _failed(str(e), usage, log, cfg, model) from None
        usage.add(turn.usage)
        log.append(f"\n## turn {turn_no} ({turn.usage.tokens_in} in, {turn.usage.tokens_out} out)")
        if turn.text:
            log.append(turn.text)
        if usage.total > cfg.agent.max_tokens:
            why = f"token cap reached ({usage.total} > max_tokens {cfg.agent.max_tokens})"
            raise _failed(why, usage, log, cfg, model)
        if not turn.calls:
            if nudged:
                raise _failed("the model stopped without calling finish", usage, log, cfg, model)
            nudged = True
            chat.say(NUDGE)
            continue
        results = []
        for c in turn.calls:
            out, err = tools.call(c.name, c.args)
            log.append(f"-> {c.name} {json.dumps(c.args)[:300]}\n<- {'ERROR ' if err else ''}{out[:300]}")
            results.append((c, out, err))
        if tools.finished:
            return _proposal(tools, usage, log, cfg, model)
        chat.results(results)
    raise _failed(f"no finish after {cfg.agent.max_turns} turns (max_turns)", usage, log, cfg, model)


def _cost(usage: Usage, cfg: Config, model: str, log: list[str]) -> float:
    dollars = cost(model, usage, cfg.agent.prices)
    if dollars is None:
        log.append(f"(no price for model {model!r}: counted as $0; set [agent] prices to change that)")
    return dollars or 0.0


def _summary(tools: FileTools, usage: Usage, log: list[str]) -> str:
    if tools.refused:
        log.append(f"\nrefused writes: {', '.join(tools.refused)}")
    log.append(f"\ntokens: {usage.tokens_in} in ({usage.cache_read} cached), {usage.tokens_out} out")
    return "\n".join(log) + "\n"


def _proposal(tools: FileTools, usage: Usage, log: list[str], cfg: Config, model: str) -> Proposal:
    assert tools.finished
    dollars = _cost(usage, cfg, model, log)
    return Proposal(description=tools.finished[0], hypothesis=tools.finished[1], tokens_in=usage.tokens_in,
                    tokens_out=usage.tokens_out, cost_usd=dollars, transcript=_summary(tools, usage, log))


def _failed(reason: str, usage: Usage, log: list[str], cfg: Config, model: str) -> AgentFailed:
    """An AgentFailed that still carries what the attempt cost, so failed trials are charged too."""
    log.append(f"\nFAILED: {reason}")
    dollars = _cost(usage, cfg, model, log)
    err = AgentFailed(reason)
    err.proposal = Proposal(description="", tokens_in=usage.tokens_in, tokens_out=usage.tokens_out,
                            cost_usd=dollars, transcript="\n".join(log) + "\n")
    return err
