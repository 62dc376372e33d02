"""The Agent role, and agents chosen by short name (imported only when used)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from nightlab.config import Config
from nightlab.errors import UsageError
from nightlab.plugins import plugin
from nightlab.types import Brief, Proposal, Status

AGENTS = {
    "scripted": "nightlab.agents.scripted:ScriptedAgent",
    "optuna": "nightlab.agents.optuna:OptunaAgent",
    "anthropic": "nightlab.agents.anthropic:AnthropicAgent",
    "openai": "nightlab.agents.openai:OpenAIAgent",
    "claude-code": "nightlab.agents.claude_code:ClaudeCodeAgent",
    "codex": "nightlab.agents.codex:CodexAgent",
}


@runtime_checkable
class Agent(Protocol):
    """Makes ONE experiment per call by editing the editable files in `workspace`.

    Raise `AgentFailed` when no proposal can be made (the trial is then `rejected`).

    Two class attributes say what the loop may do with an agent; a class that does not set them (or
    subclass Agent) gets these defaults:
    """

    # propose() may be called from several threads at once, each with its own worktree (parallel slots ask
    # together); otherwise the loop holds a lock around every call.
    concurrent: ClassVar[bool] = False
    # A trial whose parent is no longer the best is proposed again on the new best (its proposal is absolute,
    # like optuna's parameter values), instead of having its commit cherry-picked there.
    reproposes: ClassVar[bool] = False
    # How the agent's reply must end (the brief's closing section, program.brief). Empty for an agent that does not
    # read the brief; then the brief has no closing section and shows no file contents.
    reply: ClassVar[str] = ""

    # An agent may also define `check(self) -> None`: called once before a run's first trial, it raises UsageError
    # when the agent cannot work at all (an endpoint that does not answer, a model it does not know).

    def propose(self, workspace: Path, brief: Brief) -> Proposal: ...

    def observe(self, trial: int, status: Status, metric: float | None) -> None:
        """Told the outcome of each trial it proposed (and of the baseline, trial 0)."""
        ...


def load_agent(name: str, config: Config, state_dir: Path) -> Agent:
    """Instantiate an agent by short name or `module:Class` path.

    Every agent class takes `(config, state_dir)`; `state_dir` is `.nightlab/<tag>/`, where an agent
    keeps whatever must survive a resume.
    """
    return plugin(name, AGENTS, f"unknown agent {name!r} (known: {{known}})")(config, state_dir)


def check(agent: Agent) -> None:
    """The agent's start-up check, for an agent that has one."""
    if callable(fn := getattr(agent, "check", None)):
        fn()


def reply(agent: Agent) -> str:
    """The closing instructions of the agent's brief ('' for one that does not read it)."""
    return str(getattr(agent, "reply", ""))


def describe(agent: Agent, config: Config) -> str:
    """Which agent, model and endpoint made a trial (they may change between sessions of a tag)."""
    model = getattr(agent, "model", "") or config.agent.model
    where = getattr(agent, "where", "") or config.agent.base_url
    return " ".join(filter(None, [config.agent.name, model, where and f"@ {where}"]))


def capable(agent: Agent, flag: Literal["concurrent", "reproposes"]) -> bool:
    """One of the Agent protocol's flags, with its default for an agent class that does not set it."""
    return bool(getattr(agent, flag, getattr(Agent, flag)))


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or fail with the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"this needs {module}: pip install 'nightlab[{extra}]'") from None
