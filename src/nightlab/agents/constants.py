"""Module-level UPPER_CASE literal constants of a Python file: find them, format values, rewrite them in place.

Used by the optuna agent; kept free of optuna so it can be imported and tested without it.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from dataclasses import dataclass

Value = int | float | str | bool

UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")
# Names that configure the run rather than the model: searching them is wrong or pointless.
SKIP_WORDS = ("SEED", "PATH", "DIR", "FILE", "DEVICE", "BUDGET", "TIME")


@dataclass(frozen=True)
class Constant:
    """One `NAME = literal` at module level; `start`/`end` are byte offsets of the literal's text."""

    name: str
    value: Value
    text: str
    start: int
    end: int


def skipped_by_default(name: str) -> bool:
    return any(word in name for word in SKIP_WORDS)


def find_constants(source: bytes) -> dict[str, Constant]:
    """UPPER_CASE names bound once at module level to an int, float, str or bool literal (unary minus allowed).

    A name bound more than once (or also augmented, unpacked, ...) is left out: which binding to rewrite
    would be a guess.
    """
    tree = ast.parse(source)
    bound: Counter[str] = Counter()
    found: dict[str, Constant] = {}
    starts = _line_starts(source)
    for node in tree.body:
        for target in _targets(node):
            for name in (n.id for n in ast.walk(target) if isinstance(n, ast.Name)):
                bound[name] += 1
        value = _single_name_value(node)
        if value is None or not UPPER.match(value[0]):
            continue
        name, expr = value
        literal = _literal(expr)
        if literal is None:
            continue
        start = starts[expr.lineno - 1] + expr.col_offset  # ast offsets are in UTF-8 bytes
        end = starts[expr.end_lineno - 1] + expr.end_col_offset  # type: ignore[operator]
        found[name] = Constant(name, literal, source[start:end].decode(), start, end)
    return {name: c for name, c in found.items() if bound[name] == 1}


def _targets(node: ast.stmt) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        return [node.target]
    return []


def _single_name_value(node: ast.stmt) -> tuple[str, ast.expr] | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return node.target.id, node.value
    return None


def _literal(expr: ast.expr) -> Value | None:
    negative = isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub)
    if negative:
        expr = expr.operand  # type: ignore[attr-defined]
    if not isinstance(expr, ast.Constant) or not isinstance(value := expr.value, (int, float, str, bool)) \
            or type(value) not in (int, float, str, bool):
        return None
    if negative:
        return None if isinstance(value, (str, bool)) else -value
    return value


def _line_starts(source: bytes) -> list[int]:
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def format_value(value: Value, like: str = "") -> str:
    """Python source for `value`; `like` is the literal it replaces (strings keep its quote style)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    quote = next((q for q in ('"""', "'''", '"', "'") if like.lstrip("rRuU").startswith(q)), "'")
    body = value.replace("\\", "\\\\").replace(quote[0], "\\" + quote[0])
    return quote + body.replace("\n", "\\n") + quote


def format_float(x: float) -> str:
    """Three significant digits, compact: 3e-4, 0.0123, 2.5, 1.5e6. Always a float literal."""
    if x == 0:
        return "0.0"
    mantissa, exponent = f"{x:.2e}".split("e")
    exp = int(exponent)
    if -4 < exp < 5:
        return repr(float(f"{x:.3g}"))  # repr is fixed-point in this range and keeps the ".0"
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{exp}"


def parse_value(text: str) -> Value:
    return ast.literal_eval(text)


def rewrite(source: bytes, changes: dict[Constant, str]) -> bytes:
    """Replace each constant's literal text with the given text; every other byte stays as it was."""
    out = source
    for const in sorted(changes, key=lambda c: c.start, reverse=True):  # back to front keeps offsets valid
        out = out[: const.start] + changes[const].encode() + out[const.end :]
    return out
