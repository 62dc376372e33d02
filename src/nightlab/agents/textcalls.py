"""Tool calls a model wrote in its text instead of sending them as structured calls.

Small local models often know the tools but write the call as text: bare JSON, a ```json block,
Hermes/Qwen `<tool_call>` tags, a chat template's doubled braces (`{{"name": ...}}`), or a Python-like
`finish(description="...", hypothesis="...")` line. Whether the server turns such text into a structured
call depends on the server and its version, so the harness reads it itself rather than failing a trial
whose intent is plain. Only calls to the tools that exist are taken; anything else is left as prose.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

NAME_KEYS = ("name", "tool", "tool_name", "function")
ARGS_KEYS = ("arguments", "parameters", "args", "input")
MAX_TRIES = 200  # closing parentheses tried per function-call line: bounds the work on a long reply

_decoder = json.JSONDecoder(strict=False)  # strict=False: raw newlines inside strings, as models write code


def read_calls(text: str, tools: dict[str, list[str]]) -> list[tuple[str, dict[str, Any]]]:
    """The calls written in `text` as (name, arguments), in order; `tools` maps each name to its parameters."""
    calls = _json_calls(text, tools)
    if not calls and "{{" in text:
        calls = _json_calls(text.replace("{{", "{").replace("}}", "}"), tools)
    return calls or _function_calls(text, tools)


def _json_calls(text: str, tools: dict[str, list[str]]) -> list[tuple[str, dict[str, Any]]]:
    """Every JSON object (or list of them) in `text` that names a known tool, wherever it stands."""
    out: list[tuple[str, dict[str, Any]]] = []
    i = 0
    while (i := _next_open(text, i)) >= 0:
        try:
            value, end = _decoder.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        found = [c for item in (value if isinstance(value, list) else [value]) if (c := _as_call(item, tools))]
        out += found
        i = end if found or isinstance(value, (dict, list)) else i + 1
    return out


def _next_open(text: str, start: int) -> int:
    hits = [p for p in (text.find("{", start), text.find("[", start)) if p >= 0]
    return min(hits) if hits else -1


def _as_call(item: object, tools: dict[str, list[str]]) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(item, dict):
        return None
    call: dict[str, Any] = item
    if isinstance(call.get("function"), dict):  # OpenAI's wire shape: {"type": "function", "function": {...}}
        call = call["function"]
    name = next((call[k] for k in NAME_KEYS if isinstance(call.get(k), str)), None)
    if name not in tools:
        return None
    args: Any = next((call[k] for k in ARGS_KEYS if k in call), {})
    if isinstance(args, str):
        try:
            args = _decoder.decode(args or "{}")
        except ValueError:
            return None
    return (name, args) if isinstance(args, dict) else None


def _function_calls(text: str, tools: dict[str, list[str]]) -> list[tuple[str, dict[str, Any]]]:
    """`name(key="value", ...)` (or positional string arguments in the tool's parameter order)."""
    out = []
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, tools)) + r")\s*\(")
    pos = 0
    while m := pattern.search(text, pos):
        call = _parse_call(text, m.start(), tools)
        if call is None:
            pos = m.end()
            continue
        out.append(call[0])
        pos = call[1]
    return out


def _parse_call(text: str, start: int, tools: dict[str, list[str]]) -> tuple[tuple[str, dict[str, Any]], int] | None:
    """The shortest `name(...)` at `start` that Python can parse as a call with literal arguments."""
    end = start
    for _ in range(MAX_TRIES):
        end = text.find(")", end) + 1
        if end == 0:
            return None
        try:
            node = ast.parse(text[start:end].strip(), mode="eval").body
        except SyntaxError:
            continue
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            return None
        try:
            args = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
            positional = [ast.literal_eval(a) for a in node.args]
        except ValueError:
            return None
        params = tools[node.func.id]
        args |= dict(zip(params, positional))
        return (node.func.id, args), end
    return None
