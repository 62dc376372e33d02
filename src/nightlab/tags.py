"""A project's tags on disk: where their state lives, which one is the latest, which names are allowed. Stdlib
only: the read-only commands use it without loading the config schema (entry.py)."""

from __future__ import annotations

from pathlib import Path

from nightlab.errors import UsageError

STATE = ".nightlab"


def latest_tag(root: Path) -> str:
    """The most recently used tag of the project at `root`, or `run` on a first run."""
    def touched(ledger: Path) -> float:  # in WAL mode a live run writes ledger.sqlite-wal, not the file itself
        return max(p.stat().st_mtime for p in (ledger, ledger.with_name("ledger.sqlite-wal")) if p.exists())

    ledgers = sorted((root / STATE).glob("*/ledger.sqlite"), key=touched)
    return ledgers[-1].parent.name if ledgers else "run"


def check_tag(tag: str) -> str:
    bad_ref = ".." in tag or tag.endswith((".", ".lock"))  # git refuses these in a branch name
    if not tag or not all(c.isalnum() or c in "-_." for c in tag) or tag.startswith(".") or bad_ref:
        raise UsageError(f"--tag {tag!r}: use letters, digits, '-', '_' or '.' "
                         "(not '..', nor a trailing '.' or '.lock')")
    return tag


def ledger_path(root: Path, tag: str) -> Path:
    """The ledger of a tag that has run; a one-line error naming the tag for one that has not."""
    path = root / STATE / tag / "ledger.sqlite"
    if not path.exists():
        raise UsageError(f"no run with tag {tag!r} in {root} (start one with `nightlab run --tag {tag}`)")
    return path
