"""Exceptions that end a trial with a known status; anything else is a bug and propagates."""

from __future__ import annotations

from nightlab.types import Proposal, Status


class NightlabError(Exception):
    """Base: a problem to show the user in one line."""


class UsageError(NightlabError):
    """Bad configuration, flags or repository state (CLI exit code 2)."""


class TrialFailed(NightlabError):
    """A trial ended without a usable result; `status` says how."""

    status: Status = Status.CRASH


class AgentFailed(TrialFailed):
    status = Status.REJECTED
    # What the failed attempt cost (tokens, dollars, transcript), when the agent knows it.
    proposal: Proposal | None = None


class EditRejected(TrialFailed):
    status = Status.REJECTED
    diff: str = ""  # the worktree's diff as the agent left it (set where it was refused)


class RunCrashed(TrialFailed):
    status = Status.CRASH


class RunTimedOut(TrialFailed):
    status = Status.TIMEOUT


class TrialInvalid(TrialFailed):
    status = Status.INVALID


class RunLost(TrialFailed):
    status = Status.LOST


class AgentExhausted(NightlabError):
    """The agent has no more ideas (e.g. a scripted queue ran out): the run ends cleanly."""
