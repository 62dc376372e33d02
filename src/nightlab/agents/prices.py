"""What a model's tokens cost: a built-in table of list prices, overridable by `[agent] prices`.

Prices are US dollars per million tokens. A model matches the longest key that prefixes its name,
so dated snapshots (`claude-sonnet-4-5-20250929`) find their family. A model in no table costs 0,
and the agent's transcript says so, so local models (Ollama, vLLM) are free without configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from nightlab.config import Price

# List prices as published by the providers; check them before relying on the dollar figures.
DEFAULT: dict[str, tuple[float, float]] = {
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.4),
    "gpt-5": (1.25, 10.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4o": (2.5, 10.0),
    "o4-mini": (1.1, 4.4),
    "o3": (2.0, 8.0),
}


@dataclass
class Usage:
    """Tokens of one trial. `tokens_in` counts every input token, cached ones included."""

    tokens_in: int = 0
    tokens_out: int = 0
    cache_read: int = 0  # of tokens_in: served from the prompt cache
    cache_write: int = 0  # of tokens_in: written to the prompt cache

    def add(self, other: Usage) -> None:
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cache_read += other.cache_read
        self.cache_write += other.cache_write

    @property
    def total(self) -> int:
        return self.tokens_in + self.tokens_out


def price_for(model: str, overrides: dict[str, Price]) -> Price | None:
    table = {k: Price(input=i, output=o) for k, (i, o) in DEFAULT.items()} | dict(overrides)
    keys = [k for k in table if model == k or model.startswith(k)]
    return table[max(keys, key=len)] if keys else None


def cost(model: str, usage: Usage, overrides: dict[str, Price]) -> float | None:
    """Dollars for `usage`, or None when the model has no price."""
    p = price_for(model, overrides)
    if p is None:
        return None
    read = p.cache_read if p.cache_read is not None else 0.1 * p.input
    write = p.cache_write if p.cache_write is not None else 1.25 * p.input
    plain = max(0, usage.tokens_in - usage.cache_read - usage.cache_write)
    dollars = plain * p.input + usage.cache_read * read + usage.cache_write * write + usage.tokens_out * p.output
    return dollars / 1e6
