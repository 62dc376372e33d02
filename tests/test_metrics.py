"""The metric protocol (metrics.py): stdout lines, metrics.json, what makes a run a crash, constraints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nightlab import metrics
from nightlab.config import Constraint
from nightlab.errors import RunCrashed, RunTimedOut, TrialInvalid
from nightlab.types import RunResult

KARPATHY = """\
step 00951 (99.8%) | loss: 3.041893 | lrm: 0.01 | dt: 313ms | tok/sec: 1,673,446 | mfu: 39.8% | epoch: 1 | remaining: 0s
step 00952 (99.9%) | loss: 3.040877 | lrm: 0.00 | dt: 313ms | tok/sec: 1,673,446 | mfu: 39.8% | epoch: 1 | remaining: 0s
---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_vram_mb:     45060.2
mfu_percent:      39.80
total_tokens_M:   499.6
num_steps:        953
num_params_M:     50.3
depth:            8
"""


def _log(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.log"
    path.write_bytes(text.encode())
    return path


def _result(tmp_path: Path, log: str, exit_code: int | None = 0, timed_out: bool = False, reason: str = "") -> RunResult:
    return RunResult(exit_code=exit_code, seconds=1.0, timed_out=timed_out, log_path=_log(tmp_path, log), reason=reason)


def _json(tmp_path: Path, data: object) -> None:
    (tmp_path / "metrics.json").write_text(data if isinstance(data, str) else json.dumps(data))


# -- stdout lines -----------------------------------------------------------------------------------------------
def test_karpathy_summary_block(tmp_path: Path) -> None:
    found = metrics.from_log(_log(tmp_path, KARPATHY))
    assert found["val_bpb"] == 0.9979
    assert found["peak_vram_mb"] == 45060.2
    assert found["num_steps"] == 953 and found["depth"] == 8
    assert set(found) == {"val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                          "total_tokens_M", "num_steps", "num_params_M", "depth"}  # step lines are not metrics


def test_a_later_line_wins(tmp_path: Path) -> None:
    log = "val_bpb: 1.5\nepoch 1 done\nval_bpb: 1.2\nsomething else\nval_bpb: 0.9\n"
    assert metrics.from_log(_log(tmp_path, log))["val_bpb"] == 0.9


@pytest.mark.parametrize("line, value", [
    ("val_bpb: 0.5", 0.5), ("val_bpb:\t0.5", 0.5), ("val_bpb:   0.5   ", 0.5), ("val_bpb: 5.", 5.0),
    ("val_bpb: .5", 0.5), ("val_bpb: -2.5e+3", -2500.0), ("val_bpb: +1E-3", 0.001), ("val_bpb: 7", 7.0),
])
def test_number_formats(tmp_path: Path, line: str, value: float) -> None:
    assert metrics.from_log(_log(tmp_path, f"noise\n{line}\nmore noise\n")) == {"val_bpb": value}


@pytest.mark.parametrize("line", [
    "val_bpb: about 0.9", "val_bpb: 0.9 (ema)", "val_bpb:0.9", "  val_bpb: 0.9", "the val_bpb: 0.9",
    "val bpb: 0.9", "val_bpb: 1,5", "val_bpb: 0x10", "val_bpb: 1_000", "val_bpb = 0.9", "val_bpb:", "Epoch 1/3: 0.9",
    "2024-01-01 12:00:00 INFO val_bpb: 0.9", "{'val_bpb': 0.9}",
])
def test_garbage_lines_are_ignored(tmp_path: Path, line: str) -> None:
    assert "val_bpb" not in metrics.from_log(_log(tmp_path, f"{line}\n"))


def test_a_garbage_line_does_not_hide_a_good_one(tmp_path: Path) -> None:
    log = "val_bpb: 0.8\nval_bpb: soon\nval_bpb: 0.9 maybe\n"
    assert metrics.from_log(_log(tmp_path, log)) == {"val_bpb": 0.8}


def test_names_with_dots_slashes_and_dashes(tmp_path: Path) -> None:
    found = metrics.from_log(_log(tmp_path, "val/loss: 1\nR@1: 2\nmean-rank: 3\nacc.top5: 4\n"))
    assert found == {"val/loss": 1.0, "mean-rank": 3.0, "acc.top5": 4.0}  # R@1 is not a name


def test_the_summary_at_the_end_of_a_huge_log_is_found(tmp_path: Path) -> None:
    log = ("step: 1.0\n" + "x" * 200 + "\n") * 20000 + "val_bpb: 0.75\n"  # ~4 MB
    assert len(log) > 2 * metrics.MAX_LOG_SCAN
    assert metrics.from_log(_log(tmp_path, log))["val_bpb"] == 0.75


@pytest.mark.parametrize("log", ["val_bpb: 0.5\r\n", "100%|#####| 10/10 [00:01<00:00]\r          \rval_bpb: 0.5\n"],
                         ids=["crlf", "after-progress-bar"])
def test_carriage_returns_do_not_hide_a_metric(tmp_path: Path, log: str) -> None:
    assert metrics.from_log(_log(tmp_path, log)).get("val_bpb") == 0.5


# -- metrics.json ---------------------------------------------------------------------------------------------
def test_metrics_json(tmp_path: Path) -> None:
    _json(tmp_path, {"val_bpb": 0.9, "folds": [1, 2, 3], "name": "run-1", "flag": True, "nested": {"a": 1},
                     "empty": [], "mixed": [1, "x"]})
    assert metrics.from_json(tmp_path / "metrics.json") == {"val_bpb": 0.9, "folds": 2.0, "folds_std": 1.0}


def test_missing_metrics_json_is_empty(tmp_path: Path) -> None:
    assert metrics.from_json(tmp_path / "metrics.json") == {}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"val_bpb"'])
def test_a_broken_metrics_json_is_a_crash(tmp_path: Path, text: str) -> None:
    _json(tmp_path, text)
    with pytest.raises(RunCrashed, match="metrics.json"):
        metrics.read(_result(tmp_path, "val_bpb: 0.5\n"), tmp_path, "val_bpb")


def test_metrics_json_overrides_stdout(tmp_path: Path) -> None:
    _json(tmp_path, {"val_bpb": 0.5, "extra": 2})
    found = metrics.read(_result(tmp_path, "val_bpb: 1.0\npeak_memory_gb: 3\n"), tmp_path, "val_bpb")
    assert found == {"val_bpb": 0.5, "peak_memory_gb": 3.0, "extra": 2.0}  # the union, the file winning


def test_a_list_in_metrics_json_is_averaged(tmp_path: Path) -> None:
    _json(tmp_path, {"val_bpb": [0.9, 1.1, 1.0, 1.2]})  # e.g. one value per fold
    assert metrics.read(_result(tmp_path, ""), tmp_path, "val_bpb")["val_bpb"] == pytest.approx(1.05)


def test_fold_lines_are_aggregated_to_mean_and_std(tmp_path: Path) -> None:
    log = "mean_rank_fold0: 10\nmean_rank_fold1: 12\nmean_rank_fold2: 14\nacc_seed0: 0.5\nacc_seed1: 0.7\n"
    found = metrics.read(_result(tmp_path, log), tmp_path, "mean_rank")
    assert found["mean_rank"] == pytest.approx(12.0) and found["mean_rank_std"] == pytest.approx(2.0)
    assert found["acc"] == pytest.approx(0.6) and found["acc_std"] == pytest.approx(0.1414, abs=1e-4)
    assert found["mean_rank_fold1"] == 12.0  # the folds themselves stay recorded


def test_a_metric_the_run_reports_itself_beats_the_fold_mean(tmp_path: Path) -> None:
    found = metrics.read(_result(tmp_path, "m_fold0: 1\nm_fold1: 3\nm: 5\n"), tmp_path, "m")
    assert found["m"] == 5.0 and found["m_std"] == pytest.approx(2 ** 0.5)


def test_a_list_in_metrics_json_records_its_spread(tmp_path: Path) -> None:
    _json(tmp_path, {"val_bpb": [0.9, 1.1, 1.0, 1.2]})
    found = metrics.read(_result(tmp_path, ""), tmp_path, "val_bpb")
    assert found["val_bpb_std"] == pytest.approx(0.1291, abs=1e-4)


def test_with_a_trusted_evaluator_only_the_json_counts(tmp_path: Path) -> None:
    log = "val_bpb: 0.1\n"  # what training claims
    with pytest.raises(RunCrashed, match="metric missing"):
        metrics.read(_result(tmp_path, log), tmp_path, "val_bpb", stdout=False)
    _json(tmp_path, {"val_bpb": 0.7})
    assert metrics.read(_result(tmp_path, log), tmp_path, "val_bpb", stdout=False) == {"val_bpb": 0.7}


# -- what is a crash ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_nan_or_inf_on_stdout_is_a_crash(tmp_path: Path, value: str) -> None:
    with pytest.raises(RunCrashed, match="val_bpb"):
        metrics.read(_result(tmp_path, f"val_bpb: {value}\n"), tmp_path, "val_bpb")


@pytest.mark.parametrize("data", ['{"val_bpb": NaN}', '{"val_bpb": Infinity}', '{"val_bpb": [1.0, NaN]}'])
def test_nan_or_inf_in_metrics_json_is_a_crash(tmp_path: Path, data: str) -> None:
    _json(tmp_path, data)
    with pytest.raises(RunCrashed):
        metrics.read(_result(tmp_path, "val_bpb: 0.5\n"), tmp_path, "val_bpb")


def test_nan_in_a_secondary_metric_is_not_a_crash(tmp_path: Path) -> None:
    found = metrics.read(_result(tmp_path, "val_bpb: 0.5\ngrad_norm: nan\n"), tmp_path, "val_bpb")
    assert found["val_bpb"] == 0.5 and math.isnan(found["grad_norm"])


def test_a_missing_metric_is_a_crash(tmp_path: Path) -> None:
    with pytest.raises(RunCrashed, match="metric missing"):
        metrics.read(_result(tmp_path, "val_loss: 0.5\nVAL_BPB: 0.5\n"), tmp_path, "val_bpb")  # names are exact


@pytest.mark.parametrize("code, reason", [(1, "exit code 1"), (-9, "killed by signal SIGKILL"), (None, "lost")])
def test_a_failed_exit_is_a_crash_even_with_a_metric(tmp_path: Path, code: int | None, reason: str) -> None:
    _json(tmp_path, {"val_bpb": 0.5})
    with pytest.raises(RunCrashed) as e:
        metrics.read(_result(tmp_path, "val_bpb: 0.5\n", exit_code=code, reason=reason), tmp_path, "val_bpb")
    assert str(e.value) == reason


def test_a_timeout_is_a_timeout_even_with_a_metric(tmp_path: Path) -> None:
    with pytest.raises(RunTimedOut, match="timed out"):
        metrics.read(_result(tmp_path, "val_bpb: 0.5\n", exit_code=-15, timed_out=True, reason="timed out after 2s"),
                     tmp_path, "val_bpb")


# -- constraints and log tails -----------------------------------------------------------------------------------
def test_constraints() -> None:
    cs = [Constraint(name="peak_memory_gb", max=20.0), Constraint(name="acc", min=0.5)]
    metrics.check_constraints({"peak_memory_gb": 20.0, "acc": 0.5}, cs)  # the limits themselves are allowed
    with pytest.raises(TrialInvalid, match="peak_memory_gb = 20.5 > 20"):
        metrics.check_constraints({"peak_memory_gb": 20.5, "acc": 0.9}, cs)
    with pytest.raises(TrialInvalid, match="acc = 0.4 < 0.5"):
        metrics.check_constraints({"peak_memory_gb": 1.0, "acc": 0.4}, cs)
    with pytest.raises(TrialInvalid, match="acc: not reported"):
        metrics.check_constraints({"peak_memory_gb": 1.0}, cs)
    metrics.check_constraints({}, [])


def test_log_tail(tmp_path: Path) -> None:
    path = _log(tmp_path, "".join(f"line {i}\n" for i in range(100)))
    tail = metrics.log_tail(path, lines=3)
    assert tail.splitlines() == ["line 97", "line 98", "line 99"]
    assert metrics.log_tail(tmp_path / "missing.log") == ""
    assert len(metrics.log_tail(_log(tmp_path, "y" * 10_000), max_chars=100)) <= 100
