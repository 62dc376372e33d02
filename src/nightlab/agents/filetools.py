"""The five file tools of the API agents, confined to an allowlist, with errors a model can recover from.

Reads may look at any file in the workspace (the model needs prepare.py to understand the evaluation);
writes reach only the editable files and the scratchpad. A path outside the allowlist is answered with
an error for the model and never touches the disk. The harness checks the diff afterwards anyway
(workspace.verify_edits); this layer makes a refused edit cheap and visible.

Small models get the details of an edit wrong far more often than the idea, so a failed call says how to
do better instead of only that it failed: an `edit_file` whose `old` text is not in the file is answered
with the lines of the file that come closest, to copy exactly; `finish` before any editable file changed
is refused with the reason (such a trial would be rejected without being run).
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

MAX_READ = 200_000  # characters of one file shown to the model
MAX_LIST = 400  # files listed
CONTEXT = 2  # lines shown around the closest match of a failed edit
# After a change to an editable file: small models otherwise tend to go on writing instead of ending the trial.
NEXT = "; when your one change is complete, call `finish`"

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


def parse_args(raw: str | dict | None) -> dict[str, Any] | None:
    """A tool call's arguments as a dict (None: they are not a JSON object)."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}", strict=False)  # strict=False: raw newlines inside strings, as models write
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class ToolError(Exception):
    """Shown to the model as an error result; the trial goes on."""


class FileTools:
    def __init__(self, workspace: Path, editable: list[str], scratchpad: str) -> None:
        self.root = workspace.resolve()
        self.editable = list(editable)
        self.writable = [*editable, scratchpad]
        self.finished: tuple[str, str] | None = None
        self.refused: list[str] = []
        self.before = {f: self._content(f) for f in self.editable}  # to tell whether anything changed at finish

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

    def changed(self) -> bool:
        """Whether an editable file differs from what it was when the trial began."""
        return any(self._content(f) != text for f, text in self.before.items())

    def _content(self, rel: str) -> str | None:
        path = self.root / rel
        return path.read_text(errors="replace") if path.is_file() else None

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

    def _next(self, written: Path) -> str:
        return NEXT if written.relative_to(self.root).as_posix() in self.editable else ""

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
        if count == 0:
            raise ToolError(f"`old` does not occur in {path}. {closest(text, old)}")
        if count > 1:
            raise ToolError(f"`old` occurs {count} times in {path}; include more of the surrounding lines so that it "
                            "occurs exactly once")
        full.write_text(text.replace(old, new))
        return f"edited {path}{self._next(full)}"

    def t_write_file(self, path: str, content: str) -> str:
        full = self._writable(path)
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(content)
        return f"wrote {path} ({len(content.splitlines())} lines){self._next(full)}"

    def t_finish(self, description: str, hypothesis: str) -> str:
        if not description.strip():
            raise ToolError("description must not be empty")
        if not self.changed():
            raise ToolError(f"nothing changed in {', '.join(self.editable)} yet, so there is nothing to run: make your "
                            "change with edit_file (or write_file) first, then call finish")
        self.finished = (" ".join(description.split()), " ".join(hypothesis.split()))
        return "recorded; the harness will now run your change"


def closest(text: str, old: str) -> str:
    """The lines of `text` most like `old`, with a little context, for the model to copy into its next try."""
    lines, want = text.splitlines(), [s.strip() for s in old.strip("\n").splitlines()]
    if not lines or not want:
        return "Read the file and copy the exact text to replace."
    size = min(len(want), len(lines))
    target = "\n".join(want)
    scored = ((difflib.SequenceMatcher(None, "\n".join(s.strip() for s in lines[i:i + size]), target).ratio(), i)
              for i in range(len(lines) - size + 1))
    _, start = max(scored, key=lambda pair: (pair[0], -pair[1]))  # the first of equally close windows
    lo, hi = max(0, start - CONTEXT), min(len(lines), start + size + CONTEXT)
    shown = "\n".join(lines[lo:hi])
    return (f"The closest lines are {lo + 1}-{hi} of the file (copy `old` from them exactly, indentation "
            f"included):\n{shown}")
