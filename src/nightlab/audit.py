"""Is a win real or gamed? A static audit of a trial's change against its parent, and the verdict the loop records.

The checks (audit_checks.py) name every site in an editable Python file where code could move the metric
without training a better model: the metric line and its value, the evaluation, reads of the validation
and hidden splits, the time budget and the clock, the seed, files outside the run directory, opaque code. A
site the parent already has is the user's own; a site the change adds is a finding. Two more findings come
from the diff and the numbers: a change of seeds only, and a gain far beyond any earlier keep from a tiny
diff. The audit runs on every trial the keep rule judged (keep or discard): only a suspicious keep is held.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from nightlab.audit_checks import SEEDISH, sites

GAIN_RATIO = 5.0  # a gain this many times the largest earlier one ...
TINY_DIFF = 3  # ... from at most this many changed lines is suspicious
INFORMATIVE = {"metric-site", "seed-read"}  # sites counted, never reported one by one


class AuditVerdict(StrEnum):
    CLEAN = "clean"
    SUSPICIOUS = "suspicious"
    ACCEPTED = "accepted"  # suspicious, then accepted by a person (`nightlab accept N`)
    REJECTED = "rejected"  # suspicious, then rejected by a person (`nightlab reject N`)


@dataclass(frozen=True)
class Finding:
    check: str
    reason: str
    file: str = ""
    lines: list[int] = field(default_factory=list)


@dataclass
class Gain:
    """What the numbers say about a trial: its improvement and every earlier keep's (positive = better)."""

    value: float
    earlier: list[float]


def audit_change(parent: dict[str, str], child: dict[str, str], metric: str, splits: dict[str, list[str]],
                 gain: Gain | None = None) -> list[Finding]:
    """The findings of a change from `parent` to `child` (file name → text; a missing file is empty)."""
    found: list[Finding] = []
    changed_lines = 0
    seed_only = True
    for name in sorted(set(parent) | set(child)):
        old, new = parent.get(name, ""), child.get(name, "")
        if old == new:
            continue
        diff = [d for d in difflib.ndiff(old.splitlines(), new.splitlines()) if d[:1] in "+-"]
        code = [d[2:] for d in diff if d[2:].strip() and not d[2:].strip().startswith("#")]
        changed_lines += len(code)
        seed_only = seed_only and all(SEEDISH.search(line) for line in code)
        if name.endswith(".py"):
            found += _python(name, old, new, metric, splits)
    if changed_lines and seed_only:
        found.append(Finding("seed-only", "the change touches only seeds or determinism settings: a win from it is "
                                          "a lucky seed, not a better model"))
    if gain is not None and (why := _too_good(gain, changed_lines)):
        found.append(Finding("gain", why))
    return found


def _python(name: str, old: str, new: str, metric: str, splits: dict[str, list[str]]) -> list[Finding]:
    try:
        after = sites(new, metric, splits)
    except SyntaxError as e:
        return [Finding("unparsed", f"not valid Python, so not audited: {e.msg}", name, [e.lineno or 0])]
    try:
        before = sites(old, metric, splits) if old else []
    except SyntaxError:
        before = []
    seen = Counter((s.check, s.key) for s in before)
    fresh: dict[str, tuple[str, list[int]]] = {}  # check → its first reason, and every line it was found on
    for s in after:
        if seen[(s.check, s.key)] > 0:
            seen[(s.check, s.key)] -= 1
        elif s.check not in INFORMATIVE:
            fresh.setdefault(s.check, (s.reason, []))[1].append(s.line)
    found = [Finding(check, reason, name, sorted(set(lines))) for check, (reason, lines) in fresh.items()]
    count = Counter(s.check for s in before), Counter(s.check for s in after)
    if count[1]["metric-site"] > max(1, count[0]["metric-site"]):
        lines = sorted({s.line for s in after if s.check == "metric-site"})
        found.append(Finding("metric-twice", f"the metric is printed or written from {count[1]['metric-site']} "
                                             f"places (before: {count[0]['metric-site']})", name, lines))
    if count[1]["seed-read"] < count[0]["seed-read"]:
        found.append(Finding("seed-ignored", "no longer reads NIGHTLAB_SEED: every run uses the same seed, so "
                                             "fresh-seed runs cannot measure the noise", name))
    return found


def _too_good(gain: Gain, changed_lines: int) -> str:
    best_before = max((g for g in gain.earlier if g > 0), default=0.0)
    if best_before <= 0 or changed_lines > TINY_DIFF or gain.value <= GAIN_RATIO * best_before:
        return ""
    return (f"a gain of {gain.value:.4g} from {changed_lines} changed line(s) is {gain.value / best_before:.0f}x "
            f"the largest earlier gain ({best_before:.4g})")


def verdict(findings: list[Finding]) -> AuditVerdict:
    return AuditVerdict.SUSPICIOUS if findings else AuditVerdict.CLEAN


def summary(findings: list[dict]) -> str:
    """One line for tables and results.tsv: each check once, with where it was found."""
    parts = []
    for f in findings:
        where = f"{f.get('file', '')}:{','.join(map(str, f.get('lines', [])))}".strip(":")
        parts.append(f"{f['check']}" + (f" ({where})" if where else ""))
    return "; ".join(parts)


def as_records(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]


def split_paths(val: list[str], test: list[str], select: list[str]) -> dict[str, list[str]]:
    """The split names and their data paths, as the checks look for them in code."""
    return {"val": list(val), "test": list(test), "select": list(select)}
