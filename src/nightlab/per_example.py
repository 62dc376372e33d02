"""Per-example values of a metric: reading them from a run, checking them, storing them, pairing two runs.

A run may report the value of its metric on each validation example (always in the same order), either
in `metrics.json` (`"per_example": {"val_err": [...]}`, optionally `"per_example_weight": {...}` for a
ratio metric such as bits per byte) or as `per_example/<name>.npy` (and `<name>.weight.npy`) in its run
directory. The metric is their (weighted) mean. With them, a candidate and the best are compared on the
same examples, which is what measures evaluation noise: which examples happen to be in the split.

Only the standard library: nightlab does not depend on numpy, so `.npy` files are parsed here.
"""

from __future__ import annotations

import ast
import math
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path

from nightlab.errors import TrialInvalid

REL_TOLERANCE = 1e-4  # the reported metric and the mean of its per-example values must agree this closely
ABS_TOLERANCE = 1e-9
_NPY_TYPES = {"f8": "d", "f4": "f", "i8": "q", "i4": "i", "i2": "h", "i1": "b", "u1": "B", "u2": "H", "u4": "I",
              "u8": "Q", "b1": "B"}


@dataclass(frozen=True)
class Examples:
    """One run's per-example values of one metric (and weights for a ratio metric)."""

    values: array  # array('d')
    weights: array | None = None

    def __len__(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        if self.weights is None:
            return math.fsum(self.values) / len(self.values)
        return math.fsum(w * v for w, v in zip(self.weights, self.values)) / math.fsum(self.weights)

    def same(self, other: Examples) -> bool:
        return self.values == other.values and self.weights == other.weights

    # -- storage (the ledger keeps them compressed) ----------------------------------------------------
    def encode(self) -> tuple[bytes, bytes | None]:
        return _pack(self.values), (_pack(self.weights) if self.weights is not None else None)

    @classmethod
    def decode(cls, values: bytes, weights: bytes | None) -> Examples:
        return cls(_unpack(values), _unpack(weights) if weights is not None else None)


def _pack(a: array) -> bytes:
    data = array("d", a)
    if sys.byteorder == "big":
        data.byteswap()
    return zlib.compress(data.tobytes(), 6)


def _unpack(blob: bytes) -> array:
    data = array("d")
    data.frombytes(zlib.decompress(blob))
    if sys.byteorder == "big":
        data.byteswap()
    return data


# -- reading a run's outputs -----------------------------------------------------------------------
def read(run_dir: Path, data: dict, name: str, reported: float) -> Examples | None:
    """The per-example values of `name` a run reported (`data`: its metrics.json object), checked against
    the value it reported for the metric; None when it reported none. A mismatch is a TrialInvalid."""
    values = _from_json(data, "per_example", name)
    weights = _from_json(data, "per_example_weight", name)
    folder = run_dir / "per_example"
    if values is None and (folder / f"{name}.npy").is_file():
        values = read_npy(folder / f"{name}.npy")
    if weights is None and (folder / f"{name}.weight.npy").is_file():
        weights = read_npy(folder / f"{name}.weight.npy")
    if values is None:
        if weights is not None:
            raise TrialInvalid(f"per-example weights for {name} without per-example values")
        return None
    return check(Examples(values, weights), name, reported)


def check(ex: Examples, name: str, reported: float) -> Examples:
    if not len(ex):
        raise TrialInvalid(f"per-example values of {name}: empty")
    if not all(math.isfinite(v) for v in ex.values):
        raise TrialInvalid(f"per-example values of {name}: not all finite")
    if ex.weights is not None:
        if len(ex.weights) != len(ex.values):
            raise TrialInvalid(f"per-example weights of {name}: {len(ex.weights)} weights for {len(ex.values)} values")
        if not all(math.isfinite(w) and w >= 0 for w in ex.weights) or not math.fsum(ex.weights) > 0:
            raise TrialInvalid(f"per-example weights of {name}: must be finite, non-negative, not all zero")
    mean = ex.mean
    if abs(mean - reported) > REL_TOLERANCE * abs(reported) + ABS_TOLERANCE:
        kind = "weighted mean" if ex.weights is not None else "mean"
        raise TrialInvalid(f"per-example values of {name}: their {kind} {mean:.8g} differs from the reported "
                           f"{name} {reported:.8g} (print at least 6 significant digits)")
    return ex


def _from_json(data: dict, key: str, name: str) -> array | None:
    table = data.get(key)
    if table is None:
        return None
    if not isinstance(table, dict):
        raise TrialInvalid(f"metrics.json: {key} must be an object of name: [numbers]")
    values = table.get(name)
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise TrialInvalid(f"metrics.json: {key}.{name} must be a list of numbers")
    return array("d", values)


def read_npy(path: Path) -> array:
    """A 1-D numeric `.npy` array (format versions 1 to 3) as array('d')."""
    raw = path.read_bytes()
    if raw[:6] != b"\x93NUMPY":
        raise TrialInvalid(f"{path.name}: not a .npy file")
    major = raw[6]
    size_fmt, start = ("<H", 10) if major == 1 else ("<I", 12)
    (header_len,) = struct.unpack(size_fmt, raw[8:start])
    try:
        header = ast.literal_eval(raw[start:start + header_len].decode("latin1"))
        descr, fortran, shape = header["descr"], header["fortran_order"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError):
        raise TrialInvalid(f"{path.name}: unreadable .npy header") from None
    code = _NPY_TYPES.get(descr[1:]) if isinstance(descr, str) else None
    if code is None or len(shape) != 1 or fortran:
        raise TrialInvalid(f"{path.name}: must be a 1-D array of numbers (got {descr!r}, shape {shape})")
    data = array(code)
    body = raw[start + header_len:]
    if len(body) != shape[0] * data.itemsize:
        raise TrialInvalid(f"{path.name}: {len(body)} bytes of data for {shape[0]} values")
    data.frombytes(body)
    if data.itemsize > 1 and (descr[0] == ">") != (sys.byteorder == "big"):
        data.byteswap()
    return array("d", data)


# -- combining runs, pairing two sides -------------------------------------------------------------------
def average(runs: list[Examples]) -> Examples | None:
    """The per-example mean over several runs of the same code (identical runs count as one)."""
    distinct: list[Examples] = []
    for ex in runs:
        if not any(ex.same(d) for d in distinct):
            distinct.append(ex)
    if not distinct or len({len(d) for d in distinct}) != 1:
        return None
    if len(distinct) == 1:
        return distinct[0]
    k = len(distinct)
    values = array("d", (math.fsum(col) / k for col in zip(*(d.values for d in distinct))))
    weighted = [d.weights for d in distinct if d.weights is not None]
    weights = array("d", (math.fsum(col) / k for col in zip(*weighted))) if len(weighted) == k else None
    return Examples(values, weights)


def _influence(ex: Examples) -> list[float]:
    """Each example's share of the (weighted) mean's deviation: the linearization of a ratio estimator."""
    mean = ex.mean
    if ex.weights is None:
        return [v - mean for v in ex.values]
    wbar = math.fsum(ex.weights) / len(ex.weights)
    return [w * (v - mean) / wbar for w, v in zip(ex.weights, ex.values)]


def paired_se(candidate: Examples, best: Examples) -> float:
    """The standard error of (candidate's mean − best's mean) over the same examples.

    For a plain mean this is sd(c_i − b_i) / sqrt(N). For a ratio metric R = Σw·v / Σw each side is
    linearized (z_i = w_i (v_i − R) / mean(w)) and the paired differences of z are used the same way.
    """
    n = len(candidate)
    if n != len(best) or n < 2:
        raise ValueError(f"cannot pair {n} examples with {len(best)}")
    diffs = [c - b for c, b in zip(_influence(candidate), _influence(best))]
    return math.sqrt(math.fsum(d * d for d in diffs) / (n * (n - 1)))


def standard_error(ex: Examples) -> float:
    """The evaluation noise of one side alone: how much the metric moves with which examples are in the split."""
    n = len(ex)
    return math.sqrt(math.fsum(z * z for z in _influence(ex)) / (n * (n - 1))) if n >= 2 else 0.0


def mismatch(baseline: Examples | None, ex: Examples | None) -> str:
    """Why a run's per-example values cannot be paired with the baseline's ('' when they can, or none exist)."""
    if baseline is None:
        return ""
    if ex is None:
        return f"per-example values missing (the baseline reported {len(baseline)})"
    if len(ex) != len(baseline):
        return (f"per-example values: {len(ex)} given, the baseline reported {len(baseline)} "
                "(the same examples in the same order in every run)")
    if (ex.weights is None) != (baseline.weights is None):
        return "per-example weights: reported by only one of this run and the baseline"
    return ""
