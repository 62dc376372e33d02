"""nightlab.toml as the read-only commands (`status`, `log`) need it: its place, metric name and goal, checked by
the full schema (config.py, pydantic) once per text of the file and per version of the schema, then read from a
note of that check in the project's state directory, without loading the schema (benchmarks/startup.py). A file
that changed since it was checked is checked again, so bad input still gets config.py's one-line error."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from nightlab.config_file import find_config
from nightlab.tags import STATE

NOTE = "config-checked.json"
SCHEMA = ("config.py", "plugins.py")  # what decides whether a file is valid


class Metric:  # plain classes, not dataclasses: creating one costs a millisecond at each start
    def __init__(self, name: str, goal: str) -> None:
        self.name, self.goal = name, goal


class Checked:
    """A nightlab.toml the schema accepted: what `status` and `log` read of it (see status_data.Configured)."""

    def __init__(self, path: Path, metric: Metric) -> None:
        self.path, self.metric = path, metric

    @property
    def root(self) -> Path:
        return self.path.parent


def load(path: Path | None = None) -> Checked:
    """Like config.load(path), with its errors, but without the schema when this text was checked before."""
    found = (path or find_config()).resolve()
    try:
        key = _key(found.read_bytes())
    except OSError:
        key = ""
    note = found.parent / STATE / NOTE
    if key and (known := _recall(note, key)):
        return Checked(found, known)
    from nightlab import config

    cfg = config.load(path)
    checked = Checked(found, Metric(cfg.metric.name, cfg.metric.goal))
    if key:
        _remember(note, key, checked.metric)
    return checked


def _key(text: bytes) -> str:
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in SCHEMA:
        digest.update((here / name).read_bytes())
    digest.update(text)
    return digest.hexdigest()


def _recall(note: Path, key: str) -> Metric | None:
    try:
        known = json.loads(note.read_text())
        if known["key"] == key:
            return Metric(str(known["metric"]), str(known["goal"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no note, or a damaged one: check the file again
    return None


def _remember(note: Path, key: str, metric: Metric) -> None:
    """Only where the state directory exists (a read-only command creates none); a write that fails is no error."""
    if not note.parent.is_dir():
        return
    tmp = note.with_name(f"{NOTE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"key": key, "metric": metric.name, "goal": metric.goal}))
        os.replace(tmp, note)
    except OSError:
        tmp.unlink(missing_ok=True)
