"""What the API agents share about their endpoint: SDK errors as trial failures, retries, the start-up check.

Both official SDKs name their errors alike (APIConnectionError, APITimeoutError, APIStatusError, ...), so one
mapping serves both. The SDKs' own retries are off: each would wait up to the request timeout again, so a
trial could run (retries + 1) × timeout_s. The tool loop retries instead, within the trial's deadline.
"""

from __future__ import annotations

from typing import Any

from nightlab.errors import AgentFailed, UsageError

RETRY_STATUS = (408, 409, 429)  # and every 5xx: worth another try after a pause


class Retry(AgentFailed):
    """A failure that may pass if the request is sent again; `after` is the server's requested pause (s)."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


def failure(sdk: Any, e: Exception, provider: str, where: str) -> AgentFailed:
    """An SDK error as the AgentFailed that ends (or, as Retry, may repeat) the request."""
    if isinstance(e, sdk.APITimeoutError):
        return Retry(f"{provider} API error: no reply from {where} in time")
    if isinstance(e, sdk.APIConnectionError):
        return Retry(f"{provider} API error: cannot reach {where} ({short(e)})")
    status = getattr(e, "status_code", None)
    message = f"{provider} API error: {short(e)}"
    if status in RETRY_STATUS or (status or 0) >= 500:
        return Retry(message, after=retry_after(e))
    return AgentFailed(message)


def retry_after(e: Exception) -> float | None:
    response = getattr(e, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        if ms := headers.get("retry-after-ms"):
            return float(ms) / 1000
        if s := headers.get("retry-after"):
            return float(s)
    except ValueError:  # an HTTP date: use our own backoff
        pass
    return None


def short(e: Exception) -> str:
    status = getattr(e, "status_code", None)
    text = " ".join(str(e).split())[:200]
    return f"{status}: {text}" if status else text


def unreachable(sdk: Any, e: Exception, key: str, where: str) -> UsageError | None:
    """The start-up check's one-line error for an endpoint that cannot be used at all (None: some other error)."""
    if isinstance(e, sdk.APIConnectionError):
        return UsageError(f"{key}: cannot reach {where} ({short(e)}); is the server running?")
    if isinstance(e, sdk.AuthenticationError):  # not 403: a key may be allowed to chat but not to list models
        return UsageError(f"{key}: {where} refused the key ({short(e)})")
    return None


def listed(model: str, ids: list[str]) -> bool:
    """Whether a server's model list holds `model` (Ollama lists `name:latest` for a plain `name`)."""
    return model in ids or f"{model}:latest" in ids
