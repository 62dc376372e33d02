"""The metric protocol: `name: value` lines on stdout and/or `$NIGHTLAB_RUN_DIR/metrics.json`."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

from nightlab.config import Constraint
from nightlab.errors import RunCrashed, RunTimedOut, TrialInvalid
from nightlab.types import RunResult

# Karpathy's summary block: `val_bpb:          0.997900`. Only whole lines of name, colon, number count.
NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf|infinity)"
LINE = re.compile(rf"^([A-Za-z_][\w.\-/]*):[ \t]+({NUMBER})[ \t]*$", re.IGNORECASE | re.MULTILINE)
MAX_LOG_SCAN = 1 << 20  # the summary block is at the end; a huge log is only scanned at its tail
# Several folds or seeds reported by one run: `mean_rank_fold0`, `mean_rank_fold1`, … (or `_seed0`, …).
FOLD = re.compile(r"^(.+)_(?:fold|seed)(\d+)$")


def from_log(log_path: Path) -> dict[str, float]:
    with log_path.open("rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - MAX_LOG_SCAN))
        text = f.read().decode("utf-8", "replace").replace("\r", "\n")  # CRLF, progress bars
    return {name: float(value) for name, value in LINE.findall(text)}  # later lines win


def load_json(path: Path) -> dict:
    """The object in a run's metrics.json ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunCrashed(f"metrics.json is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RunCrashed("metrics.json must hold an object of name: number")
    return data


def from_json(path: Path) -> dict[str, float]:
    data = load_json(path)
    out: dict[str, float] = {}
    for name, value in data.items():
        if isinstance(value, list) and value and all(_number(v) for v in value):
            _spread(out, name, [_float(v) for v in value])  # several folds or seeds in one run: mean ± std
        elif _number(value):
            out[name] = _float(value)
    return out


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float(value: int | float) -> float:
    """JSON integers have no size limit: one beyond a float's range is infinite (so not a usable metric)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def aggregate(metrics: dict[str, float]) -> dict[str, float]:
    """Add `name` = mean and `name_std` = sample std over `name_fold0..k` (or `_seed0..k`).

    A value the run reported itself under `name` or `name_std` is left as it is.
    """
    groups: dict[str, list[float]] = {}
    for key, value in metrics.items():
        if m := FOLD.match(key):
            groups.setdefault(m.group(1), []).append(value)
    out = dict(metrics)
    for name, values in groups.items():
        _spread(out, name, values)
    return out


def _spread(out: dict[str, float], name: str, values: list[float]) -> None:
    """`name` = the mean and `name_std` = the sample std of `values`, unless `out` has them; a mean beyond a
    float's range is infinite (so not a usable metric), and such values have no std."""
    try:
        out.setdefault(name, statistics.fmean(values))
    except OverflowError:
        out.setdefault(name, math.inf if sum(math.copysign(1, v) for v in values) > 0 else -math.inf)
        return
    if len(values) >= 2 and all(math.isfinite(v) for v in values):
        try:
            out.setdefault(f"{name}_std", statistics.stdev(values))
        except OverflowError:
            pass


def read_exit(result: RunResult) -> None:
    """Raise with the status a run that did not finish cleanly earns."""
    if result.timed_out:
        raise RunTimedOut(result.reason)
    if result.exit_code != 0:
        raise RunCrashed(result.reason)  # a metric printed before crashing is not a result


def read(result: RunResult, run_dir: Path, primary: str, stdout: bool = True) -> dict[str, float]:
    """All metrics of a finished run; raises with the status the run earns if it has no usable primary."""
    read_exit(result)
    metrics = aggregate((from_log(result.log_path) if stdout else {}) | from_json(run_dir / "metrics.json"))
    if primary not in metrics:
        raise RunCrashed(f"metric missing: no '{primary}: <number>' line and no metrics.json entry")
    if not math.isfinite(metrics[primary]):
        raise RunCrashed(f"{primary} is {metrics[primary]}")
    return metrics


def check_constraints(metrics: dict[str, float], constraints: list[Constraint]) -> None:
    for c in constraints:
        value = metrics.get(c.name)
        if value is None:
            raise TrialInvalid(f"constraint {c.name}: not reported by the run")
        if c.max is not None and value > c.max:
            raise TrialInvalid(f"constraint violated: {c.name} = {value:g} > {c.max:g}")
        if c.min is not None and value < c.min:
            raise TrialInvalid(f"constraint violated: {c.name} = {value:g} < {c.min:g}")


def log_tail(path: Path, lines: int = 30, max_chars: int = 4000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - max_chars))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
