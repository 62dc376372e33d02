"""Small moves for the optuna agent: one to `knobs` constants change per trial, each within a neighbourhood of
its value in the trial's starting state, so that a keep can be attributed (and `verify --ablate` can take it
apart) and a ratchet climbs instead of jumping around the whole space.

A move's size comes from the search range: a numeric constant moves at most `step` of its range (of the log of
it for log-scaled ones) either way, and TPE picks the new value inside that window from what it learned; a
categorical one moves to a neighbouring choice (ordered numeric choices: the next one up or down; otherwise any
other choice). Every constant that does not move is fixed at its current value, so the optuna trial records the
whole point that ran and TPE models it as it is.
"""

from __future__ import annotations

import math
import random
from typing import Any

from nightlab.agents.constants import Constant, Value


def pick(rng: random.Random, keys: list[str], knobs: int) -> list[str]:
    """The constants that move: one to `knobs` of them, how many uniformly, which uniformly."""
    count = rng.randint(1, max(1, min(knobs, len(keys))))
    return sorted(rng.sample(keys, count))


def local_point(optuna: Any, space: dict[str, dict], current: dict[str, Constant], moving: list[str],
                rng: random.Random, step: float) -> tuple[dict[str, Any], dict[str, Value]]:
    """(distributions to ask with, values fixed in advance) for a move of the `moving` constants.

    A constant whose current value lies outside its range (a configured range may exclude the original) moves
    too, anywhere in its range: the user asked for it to be searched there, and optuna cannot hold it as it is.
    """
    dists: dict[str, Any] = {}
    fixed: dict[str, Value] = {}
    d = optuna.distributions
    for key, dim in space.items():
        value = current[key].value if key in current else None
        if value is None or not within(dim, value):
            dists[key] = full(optuna, dim)  # nowhere in range to move from
            continue
        if key in moving and dim["kind"] == "cat":
            dists[key], fixed[key] = full(optuna, dim), neighbour(dim["choices"], value, rng)
        elif key in moving:
            low, high = window(dim, float(value), step)
            cls = d.IntDistribution if dim["kind"] == "int" else d.FloatDistribution
            dists[key] = cls(int(low) if dim["kind"] == "int" else low, int(high) if dim["kind"] == "int" else high,
                             log=dim["log"])
        else:
            dists[key], fixed[key] = full(optuna, dim), value
    return dists, fixed


def full(optuna: Any, dim: dict) -> Any:
    d = optuna.distributions
    if dim["kind"] == "cat":
        return d.CategoricalDistribution(dim["choices"])
    if dim["kind"] == "int":
        return d.IntDistribution(dim["low"], dim["high"], log=dim["log"])
    return d.FloatDistribution(dim["low"], dim["high"], log=dim["log"])


def window(dim: dict, value: float, step: float) -> tuple[float, float]:
    """The range a numeric constant may move to: `step` of its (log) range either way, clipped to the range."""
    low, high = dim["low"], dim["high"]
    if dim["log"]:
        ratio = math.exp(step * math.log(high / low))
        lo, hi = max(low, value / ratio), min(high, value * ratio)
    else:
        width = step * (high - low)
        lo, hi = max(low, value - width), min(high, value + width)
    if dim["kind"] == "int":  # at least one step either way, where the range allows it
        lo, hi = max(low, min(math.floor(lo), value - 1)), min(high, max(math.ceil(hi), value + 1))
    return lo, hi


def neighbour(choices: list, value: Value, rng: random.Random) -> Value:
    """A choice next to `value`: the next one up or down for numeric choices, any other choice otherwise."""
    others = [c for c in choices if not _same(c, value)]
    numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)
    if not numeric or not others:
        return rng.choice(others) if others else value
    ordered = sorted(choices)
    i = next(i for i, c in enumerate(ordered) if _same(c, value))
    return rng.choice([c for c in (ordered[i - 1] if i else None, ordered[i + 1] if i + 1 < len(ordered) else None)
                       if c is not None])


def within(dim: dict, value: Value) -> bool:
    if dim["kind"] == "cat":
        return any(_same(c, value) for c in dim["choices"])
    return not isinstance(value, (str, bool)) and dim["low"] <= value <= dim["high"]


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b
