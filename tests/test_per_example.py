"""Per-example values (per_example.py): reading metrics.json and .npy files, checks, storage, the paired error."""

from __future__ import annotations

import json
import math
import random
import statistics
from array import array
from pathlib import Path

import numpy as np
import pytest

from nightlab import per_example
from nightlab.errors import TrialInvalid
from nightlab.ledger import Ledger
from nightlab.per_example import Examples


def ex(values: list[float], weights: list[float] | None = None) -> Examples:
    return Examples(array("d", values), array("d", weights) if weights is not None else None)


def test_metrics_json_lists_are_read_and_checked_against_the_reported_mean(tmp_path: Path) -> None:
    data = {"val_err": 0.25, "per_example": {"val_err": [0, 1, 0, 0]}}
    got = per_example.read(tmp_path, data, "val_err", 0.25)
    assert got is not None and list(got.values) == [0.0, 1.0, 0.0, 0.0] and got.weights is None
    assert per_example.read(tmp_path, {"val_err": 0.25}, "val_err", 0.25) is None  # none reported: fine
    with pytest.raises(TrialInvalid, match=r"mean 0\.25 differs from the reported val_err 0\.2"):
        per_example.read(tmp_path, data, "val_err", 0.2)


def test_weights_make_a_ratio_metric(tmp_path: Path) -> None:
    # bits per byte: chunk values 1.0 over 100 bytes and 2.0 over 300 bytes → (100 + 600) / 400 = 1.75
    data = {"per_example": {"val_bpb": [1.0, 2.0]}, "per_example_weight": {"val_bpb": [100, 300]}}
    got = per_example.read(tmp_path, data, "val_bpb", 1.75)
    assert got is not None and got.mean == 1.75
    with pytest.raises(TrialInvalid, match="weighted mean"):
        per_example.read(tmp_path, data, "val_bpb", 1.5)  # the plain mean: the weights were ignored


def test_a_value_printed_with_six_digits_agrees(tmp_path: Path) -> None:
    values = [random.Random(1).random() for _ in range(1000)]
    printed = float(f"{statistics.fmean(values):.6f}")
    assert per_example.read(tmp_path, {"per_example": {"m": values}}, "m", printed) is not None


@pytest.mark.parametrize("data, why", [
    ({"per_example": [1, 2]}, "must be an object"),
    ({"per_example": {"m": "abc"}}, "must be a list of numbers"),
    ({"per_example": {"m": [1, True]}}, "must be a list of numbers"),
    ({"per_example": {"m": []}}, "empty"),
    ({"per_example": {"m": [1.0, 2.0]}, "per_example_weight": {"m": [1.0]}}, "1 weights for 2 values"),
    ({"per_example": {"m": [1.0, 2.0]}, "per_example_weight": {"m": [0, 0]}}, "not all zero"),
    ({"per_example_weight": {"m": [1.0]}}, "without per-example values"),
])
def test_malformed_values_are_a_clear_reason(tmp_path: Path, data: dict, why: str) -> None:
    with pytest.raises(TrialInvalid, match=why):
        per_example.read(tmp_path, data, "m", 1.5)


def test_nan_among_the_values_is_refused(tmp_path: Path) -> None:
    (tmp_path / "per_example").mkdir()
    np.save(tmp_path / "per_example" / "m.npy", np.array([1.0, np.nan]))
    with pytest.raises(TrialInvalid, match="not all finite"):
        per_example.read(tmp_path, {}, "m", 1.0)


@pytest.mark.parametrize("dtype", ["<f8", ">f8", "<f4", "<i4", "|u1", "|b1"])
def test_npy_files_of_every_plain_numeric_type(tmp_path: Path, dtype: str) -> None:
    folder = tmp_path / "per_example"
    folder.mkdir()
    values = np.array([1, 0, 1, 1], dtype=dtype)
    np.save(folder / "m.npy", values)
    np.save(folder / "m.weight.npy", np.array([2.0, 1.0, 1.0, 4.0], dtype="<f4"))
    got = per_example.read(tmp_path, {}, "m", 7 / 8)
    assert got is not None and list(got.values) == [1.0, 0.0, 1.0, 1.0] and list(got.weights) == [2, 1, 1, 4]


def test_metrics_json_wins_over_a_file_and_a_large_file_reads(tmp_path: Path) -> None:
    folder = tmp_path / "per_example"
    folder.mkdir()
    big = np.random.default_rng(0).random(200_000)
    np.save(folder / "m.npy", big)
    got = per_example.read(tmp_path, {}, "m", float(big.mean()))
    assert got is not None and len(got) == 200_000 and got.values[123] == big[123]
    assert list(per_example.read(tmp_path, {"per_example": {"m": [1.0, 3.0]}}, "m", 2.0).values) == [1.0, 3.0]


@pytest.mark.parametrize("array_", [np.zeros((2, 2)), np.array(["a", "b"]), np.zeros(3, dtype=complex)])
def test_npy_that_is_not_a_flat_numeric_array_is_refused(tmp_path: Path, array_: np.ndarray) -> None:
    (tmp_path / "per_example").mkdir()
    np.save(tmp_path / "per_example" / "m.npy", array_)
    with pytest.raises(TrialInvalid, match="1-D array of numbers"):
        per_example.read(tmp_path, {}, "m", 0.0)


def test_a_file_that_is_not_npy_is_refused(tmp_path: Path) -> None:
    (tmp_path / "per_example").mkdir()
    (tmp_path / "per_example" / "m.npy").write_bytes(b"PK\x03\x04 not numpy")
    with pytest.raises(TrialInvalid, match="not a .npy file"):
        per_example.read(tmp_path, {}, "m", 0.0)


def test_paired_se_of_a_plain_mean_is_the_sd_of_the_differences_over_root_n() -> None:
    rng = random.Random(0)
    b = [rng.random() for _ in range(500)]
    c = [v + rng.gauss(0.01, 0.05) for v in b]
    diffs = [x - y for x, y in zip(c, b)]
    expected = statistics.stdev(diffs) / math.sqrt(len(diffs))
    assert per_example.paired_se(ex(c), ex(b)) == pytest.approx(expected, rel=1e-12)
    assert per_example.paired_se(ex(b), ex(b)) == 0.0  # the same examples, the same values: no doubt at all


def test_paired_se_of_a_ratio_metric_matches_the_delta_method() -> None:
    """Checked against a bootstrap over examples of the difference of two weighted means."""
    rng = np.random.default_rng(3)
    n = 400
    w = rng.integers(50, 500, n).astype(float)
    b = rng.normal(1.0, 0.3, n)
    c = b + rng.normal(-0.02, 0.1, n)
    se = per_example.paired_se(ex(list(c), list(w)), ex(list(b), list(w)))
    idx = rng.integers(0, n, (4000, n))
    boot = (c[idx] * w[idx]).sum(1) / w[idx].sum(1) - (b[idx] * w[idx]).sum(1) / w[idx].sum(1)
    assert se == pytest.approx(boot.std(), rel=0.1)


def test_pairing_needs_the_same_examples() -> None:
    with pytest.raises(ValueError):
        per_example.paired_se(ex([1.0, 2.0]), ex([1.0, 2.0, 3.0]))
    assert per_example.mismatch(None, ex([1.0])) == ""
    assert "missing" in per_example.mismatch(ex([1.0, 2.0]), None)
    assert "3 given, the baseline reported 2" in per_example.mismatch(ex([1.0, 2.0]), ex([1.0, 2.0, 3.0]))
    assert "weights" in per_example.mismatch(ex([1.0, 2.0]), ex([1.0, 2.0], [1.0, 1.0]))


def test_average_counts_identical_runs_once() -> None:
    a, b = ex([0.0, 1.0]), ex([1.0, 1.0])
    assert list(per_example.average([a, a, a, b]).values) == [0.5, 1.0]  # not [0.25, 1.0]
    assert per_example.average([a, a]) is a
    assert per_example.average([]) is None


def test_the_ledger_stores_them_compactly_and_gives_them_back(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    zeros_and_ones = ex([float(i % 7 == 0) for i in range(100_000)])
    ledger.save_examples(3, 0, zeros_and_ones)
    ledger.save_examples(3, 1, ex([1.0] * 100_000))
    size = ledger.db.execute("SELECT SUM(LENGTH(vals)) FROM examples").fetchone()[0]
    assert size < 100_000 * 8 / 20  # 0/1 losses compress far below 8 bytes a value
    got = ledger.examples(3)
    assert len(got) == 2 and got[0].same(zeros_and_ones)
    assert ledger.mean_examples(3).values[0] == 1.0 and ledger.mean_examples(3).values[1] == 0.5
    ledger.forget_examples(3)
    assert ledger.examples(3) == [] and ledger.mean_examples(3) is None
    weighted = ex([1.5, 2.5], [10.0, 30.0])
    ledger.save_examples(4, 0, weighted)
    ledger.close()
    again = Ledger(tmp_path / "ledger.sqlite")  # resume: what a killed harness stored is still there
    assert again.examples(4)[0].same(weighted)
    again.close()


def test_metrics_json_example_from_the_readme_round_trips(tmp_path: Path) -> None:
    doc = {"val_err": 0.5, "per_example": {"val_err": [0.0, 1.0]}}
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    from nightlab import metrics

    data = metrics.load_json(tmp_path / "metrics.json")
    assert metrics.from_json(tmp_path / "metrics.json") == {"val_err": 0.5}  # the lists are not metrics
    assert per_example.read(tmp_path, data, "val_err", 0.5) is not None
