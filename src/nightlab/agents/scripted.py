"""An agent that applies a queue of human-written edits (ideas.toml), one idea per trial.

Each [[idea]] has a one-line `description`, an optional `hypothesis`, and one or more [[idea.edit]]
tables: `file` + `search` + `replace` (the search text must occur exactly once), `file` + `content`
(the whole new file), or `patch` (a unified diff, applied with `git apply` relative to the workspace).
Write patches as TOML literal strings ('''...''') so backslashes in them reach git unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

from nightlab.agents import Agent
from nightlab.config import Config
from nightlab.errors import AgentExhausted, AgentFailed, UsageError
from nightlab.types import Brief, Proposal, Status

STATE_NAME = "scripted.json"
IDEA_KEYS = {"description", "hypothesis", "edit"}
EDIT_KINDS = ({"file", "search", "replace"}, {"file", "content"}, {"patch"})


class ScriptedAgent(Agent):
    """Trial n gets the next unused idea; the assignment is saved so a resumed trial gets the same one."""

    def __init__(self, config: Config, state_dir: Path) -> None:
        queue = Path(config.agent.queue)
        self.queue_path = queue if queue.is_absolute() else config.root / queue
        self.ideas = load_queue(self.queue_path)
        self.state_path = Path(state_dir) / STATE_NAME
        self.known: tuple[tuple[int, int], dict[str, int]] | None = None  # the file as this agent left it

    def propose(self, workspace: Path, brief: Brief) -> Proposal:
        index = self._assign(brief.trial)
        idea = self.ideas[index]
        where = f"{self.queue_path.name} idea {index + 1}"
        try:
            description, hypothesis = _describe(idea)
            log = [f"{where}: {description}"]
            edits = idea.get("edit")
            if not isinstance(edits, list) or not edits:
                raise AgentFailed("needs at least one [[idea.edit]]")
            for n, edit in enumerate(edits, 1):
                log.append(f"  edit {n}: " + apply_edit(Path(workspace), edit))
        except AgentFailed as e:
            raise AgentFailed(f"{where}: {e}") from None
        return Proposal(description=description, hypothesis=hypothesis, transcript="\n".join(log) + "\n")

    def observe(self, trial: int, status: Status, metric: float | None) -> None:
        """The queue is fixed in advance, so outcomes change nothing."""

    def _assign(self, trial: int) -> int:
        """The idea index for `trial`, recorded before it is applied so a malformed idea still counts as used."""
        assigned, whole = self._state()
        if str(trial) in assigned:
            return assigned[str(trial)]
        index = max(assigned.values(), default=-1) + 1
        if index >= len(self.ideas):
            raise AgentExhausted(f"all {len(self.ideas)} ideas in {self.queue_path} have been tried")
        assigned[str(trial)] = index
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        if whole:  # one line more: a night's thousandth trial writes what its first did
            fd = os.open(self.state_path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, _line(trial, index))
            finally:
                os.close(fd)
        else:  # a new state, an older nightlab's, or one a kill cut: written whole, atomically
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_bytes(b"".join(_line(int(t), i) for t, i in assigned.items()))
            tmp.replace(self.state_path)
        st = self.state_path.stat()
        self.known = ((st.st_ino, st.st_size), assigned)
        return index

    def _state(self) -> tuple[dict[str, int], bool]:
        """_load_state(), read again only when the file is not as this agent left it."""
        try:
            st = self.state_path.stat()
        except FileNotFoundError:
            return {}, False
        if self.known is not None and self.known[0] == (st.st_ino, st.st_size):
            return self.known[1], True
        return self._load_state()

    def _load_state(self) -> tuple[dict[str, int], bool]:
        """Trial → idea index, and whether the file is whole in this format (a line may be appended to it).

        One JSON line a trial, appended when it is assigned: a line cut by a kill (no newline yet) was never
        applied, and is dropped. An older nightlab's state, one JSON object, is read too."""
        if not self.state_path.is_file():
            return {}, False
        text = self.state_path.read_text()
        try:
            if text.startswith("{\n") or text.startswith('{"trials"'):
                return {str(k): int(v) for k, v in json.loads(text)["trials"].items()}, False
            lines = text.split("\n")
            rows = [json.loads(line) for line in lines[:-1]]
            return {str(row["trial"]): int(row["idea"]) for row in rows}, not lines[-1]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            why = f"unreadable agent state ({e}); delete it to start the queue over"
            raise UsageError(f"{self.state_path}: {why}") from None


def _line(trial: int, index: int) -> bytes:
    return json.dumps({"trial": trial, "idea": index}).encode() + b"\n"


def load_queue(path: Path) -> list[dict]:
    """The ideas in the queue file.

    Problems with the file as a whole are UsageErrors; problems inside one idea wait for propose, so that
    one bad idea costs one rejected trial rather than the night.
    """
    if not path.is_file():
        raise UsageError(f"{path}: idea queue not found (set agent.queue in nightlab.toml)")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    extra = sorted(set(data) - {"idea"})
    if extra:
        raise UsageError(f"{path}: unknown top-level key {extra[0]!r} (expected [[idea]] tables)")
    ideas = data.get("idea")
    if not isinstance(ideas, list) or not ideas:
        raise UsageError(f"{path}: expected one or more [[idea]] tables")
    for n, idea in enumerate(ideas, 1):
        if not isinstance(idea, dict):
            raise UsageError(f"{path}: idea {n} is not a table (write it as [[idea]])")
    return ideas


def _describe(idea: dict) -> tuple[str, str]:
    unknown = sorted(set(idea) - IDEA_KEYS)
    if unknown:
        raise AgentFailed(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(IDEA_KEYS))})")
    description, hypothesis = idea.get("description"), idea.get("hypothesis", "")
    if not isinstance(description, str) or not description.strip():
        raise AgentFailed("missing description")
    if not isinstance(hypothesis, str):
        raise AgentFailed("hypothesis must be a string")
    # The description becomes one row of the results table, so it must be one line.
    return " ".join(description.split()), " ".join(hypothesis.split())


def apply_edit(workspace: Path, edit: object) -> str:
    """Apply one edit to the workspace and return a one-line account of it."""
    if not isinstance(edit, dict):
        raise AgentFailed("each [[idea.edit]] must be a table")
    kind = next((k for k in EDIT_KINDS if set(edit) == k), None)
    if kind is None:
        raise AgentFailed(f"edit keys {sorted(edit)}: expected file+search+replace, file+content, or patch")
    if not all(isinstance(v, str) for v in edit.values()):
        raise AgentFailed("edit values must be strings")
    if "patch" in edit:
        return _apply_patch(workspace, edit["patch"])
    path = _inside(workspace, edit["file"])
    if "content" in edit:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(edit["content"].encode())
        return f"{edit['file']}: wrote {len(edit['content'].splitlines())} lines"
    if not path.is_file():
        raise AgentFailed(f"{edit['file']}: no such file")
    text = path.read_bytes().decode()  # bytes, so line endings survive untouched
    count = text.count(edit["search"]) if edit["search"] else 0
    if count != 1:
        found = "not found" if count == 0 else f"found {count} times"
        raise AgentFailed(f"{edit['file']}: search text {_short(edit['search'])} {found} (it must occur exactly once)")
    path.write_bytes(text.replace(edit["search"], edit["replace"]).encode())
    return f"{edit['file']}: replaced {_short(edit['search'])} with {_short(edit['replace'])}"


def _inside(workspace: Path, name: str) -> Path:
    """Resolve a relative file name, refusing ones that leave the workspace (the allowlist is the harness's job)."""
    root = workspace.resolve()
    path = (root / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(root) or path == root:
        raise AgentFailed(f"{name!r}: not a file inside the workspace")
    return path


def _apply_patch(workspace: Path, patch: str) -> str:
    if not patch.endswith("\n"):
        patch += "\n"  # TOML multi-line strings often lose the final newline git apply insists on
    # Stop git from finding a repository above the workspace: paths in the patch are then read relative
    # to the workspace itself, whether or not it is a repository root.
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(Path(workspace).resolve().parent)}
    cmd = ["git", "apply", "--whitespace=nowarn", "--verbose", "-"]
    try:
        done = subprocess.run(cmd, cwd=workspace, input=patch, capture_output=True, text=True, env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AgentFailed(f"patch: could not run git apply: {e}") from None
    if done.returncode != 0:
        # git's last error line is the summary ("f.txt: patch does not apply"); earlier ones quote context
        errors = [ln.removeprefix("error: ") for ln in done.stderr.splitlines() if ln.startswith(("error", "fatal"))]
        why = errors[-1] if errors else done.stderr.strip() or "git apply failed"
        raise AgentFailed(f"patch does not apply: {why}")
    prefix, suffix = "Applied patch ", " cleanly."
    files = [ln[len(prefix) :].removesuffix(suffix) for ln in done.stderr.splitlines() if ln.startswith(prefix)]
    return "applied patch to " + (", ".join(files) or "the workspace")


def _short(text: str, limit: int = 40) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")
