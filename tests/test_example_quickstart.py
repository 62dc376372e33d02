"""The quickstart example (examples/quickstart): its four splits, the per-example losses, the select split.

The fast tests run prepare.py and train.py themselves (a few seconds of numpy each): the splits are
pinned by digest (val and test are the ones from before the select split existed), a run writes the
loss of every val image to metrics.json, and NIGHTLAB_SPLIT=select scores the select split. The slow
one checks through `nightlab trial`, in the sandbox, that a trial cannot see data/select.npz.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from examplekit import check_per_example, digest, example_cli, load_module, summary, trial_visibility
from nlkit import ROOT, isolated_env

QUICKSTART = ROOT / "examples" / "quickstart"
EXAMPLES = ("quickstart", "retrieval", "tinylm", "gpt-cuda")
# Digests of the splits (name, dtype, shape and bytes of each array). val and test are exactly those of
# the 60/20/20 split from before the select split was cut out of train: adding it moved no val or test image.
SPLIT_DIGEST = {
    "train": "db17491b8078f1755f5abe4e54ea7ae656741053dbb7edf60682891aa7ce66ae",
    "select": "e1102c65edc8069c54b1b7888b1d0d38f8fa8b0a54ebb6804213e9cfa7d34d39",
    "val": "32ca67725b6a919d5a6676bb134b54e718e1559a61ea23799a8b9677fae3dbfd",
    "test": "33f4d2f88fd120e2bc2d5d5e2792befe6171a28e051392adfb134058ca455067",
}
SIZES = {"train": 717, "select": 360, "val": 360, "test": 360}

@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with prepare.py, train.py and the data prepare.py wrote (once for this module)."""
    root = tmp_path_factory.mktemp("quickstart")
    for name in ("prepare.py", "train.py"):
        shutil.copy(QUICKSTART / name, root / name)
    proc = subprocess.run([sys.executable, "prepare.py"], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return root


def run_train(cwd: Path, run_dir: Path, **env: str) -> tuple[dict[str, float], dict]:
    """train.py at a budget of 3 s: its summary block, and the metrics.json it wrote."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = isolated_env(cwd / "home") | {"NIGHTLAB_RUN_DIR": str(run_dir), "NIGHTLAB_BUDGET_S": "3"} | env
    proc = subprocess.run([sys.executable, "train.py"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.json"]  # written whole: no .tmp left behind
    return summary(proc.stdout), json.loads((run_dir / "metrics.json").read_text())


def test_quickstart_splits_are_pinned_and_partition_the_digits(prepared: Path) -> None:
    from sklearn.datasets import load_digits

    data = prepared / "data"
    assert {name: digest(data / f"{name}.npz") for name in SPLIT_DIGEST} == SPLIT_DIGEST
    rows = []
    for name, n in SIZES.items():
        with np.load(data / f"{name}.npz") as f:
            X, y = f["X"], f["y"]
        assert X.shape == (n, 64) and y.shape == (n,)
        assert np.bincount(y, minlength=10).min() >= n // 10 - 2  # stratified: every class, in proportion
        rows.append(np.column_stack([X, y]))
    X, y = load_digits(return_X_y=True)
    everything = np.column_stack([(X / 16.0).astype(np.float32), y])
    # the four splits together are the data set, each image exactly once
    assert np.array_equal(np.unique(np.concatenate(rows), axis=0, return_counts=True)[1],
                          np.unique(everything, axis=0, return_counts=True)[1])
    proc = subprocess.run([sys.executable, "prepare.py"], cwd=prepared, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "already prepared" in proc.stdout


def test_quickstart_run_reports_the_loss_of_every_val_image(prepared: Path, tmp_path: Path) -> None:
    printed, metrics = run_train(prepared, tmp_path / "run")
    losses = check_per_example(metrics, "val_loss", SIZES["val"])
    assert (losses >= 0).all() and 0 < metrics["val_loss"] < 2.3  # below chance (ln 10)
    assert set(metrics) == {"val_loss", "val_accuracy", "per_example"}
    # the summary block nightlab also reads says the same, to the 6 significant digits it prints
    assert printed["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-5)
    assert printed["val_accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-4)


def test_quickstart_select_run_scores_the_select_split(prepared: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    alone = tmp_path / "select-only"  # train and select only: a select run never reads val (or test)
    (alone / "data").mkdir(parents=True)
    for name in ("prepare.py", "train.py", "data/train.npz", "data/select.npz"):
        shutil.copy(prepared / name, alone / name)
    printed, metrics = run_train(alone, tmp_path / "run", NIGHTLAB_SPLIT="select")
    assert "val_loss" not in printed and "val_loss" not in metrics
    losses = check_per_example(metrics, "select_loss", SIZES["select"])
    assert set(metrics["per_example"]) == {"select_loss"} and 0 < metrics["select_loss"] < 2.3
    assert printed["select_loss"] == pytest.approx(metrics["select_loss"], rel=1e-5)
    assert "select_accuracy" in printed

    prep = load_module(prepared / "prepare.py", "quickstart_prepare")
    monkeypatch.chdir(prepared)
    uniform = prep.evaluate(lambda X: np.full((len(X), 10), 0.1), "select")
    assert uniform["select_loss"] == pytest.approx(np.log(10))
    assert np.allclose(uniform["per_example"]["select_loss"], np.log(10)) and len(losses) == 360


def write_metrics_of(example: str) -> str:
    """The source of write_metrics in an example's prepare.py."""
    source = (ROOT / "examples" / example / "prepare.py").read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "write_metrics")
    return ast.get_source_segment(source, node)


def test_write_metrics_is_atomic_json_or_npy_and_the_same_in_every_example(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert len({write_metrics_of(example) for example in EXAMPLES}) == 1  # one protocol, one writer
    prep = load_module(QUICKSTART / "prepare.py", "quickstart_prepare_writer")
    monkeypatch.delenv("NIGHTLAB_RUN_DIR", raising=False)
    assert prep.write_metrics({"val_loss": 1.0}) is None  # by hand: no run directory, nothing written

    monkeypatch.setenv("NIGHTLAB_RUN_DIR", str(tmp_path))
    small, weights = np.array([0.5, 1.5, 4.0]), np.array([1.0, 1.0, 2.0])
    big = np.linspace(0.0, 1.0, prep.PER_EXAMPLE_JSON_MAX + 1)
    path = prep.write_metrics({"val_bpb": 2.5, "val_big": float(big.mean()),
                               "per_example": {"val_bpb": small, "val_big": big},
                               "per_example_weight": {"val_bpb": weights, "val_big": np.ones_like(big)}})
    assert path == str(tmp_path / "metrics.json")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == {"val_bpb": 2.5, "val_big": 0.5, "per_example": {"val_bpb": [0.5, 1.5, 4.0]},
                       "per_example_weight": {"val_bpb": [1.0, 1.0, 2.0]}}
    check_per_example(metrics, "val_bpb", 3, weighted=True)
    # a long vector goes to per_example/<name>.npy (and .weight.npy), float64, 1-D
    assert np.array_equal(np.load(tmp_path / "per_example" / "val_big.npy"), big)
    assert np.array_equal(np.load(tmp_path / "per_example" / "val_big.weight.npy"), np.ones_like(big))
    assert not list(tmp_path.rglob("*.tmp"))


def test_quickstart_config_hides_the_select_split() -> None:
    from nightlab.config import load

    cfg = load(QUICKSTART / "nightlab.toml")
    assert cfg.metric.name == "val_loss" and cfg.data.val == ["data/val.npz"]
    assert cfg.data.test == ["data/test.npz"] and cfg.data.select == ["data/select.npz"]


@pytest.mark.slow
def test_quickstart_select_split_is_hidden_from_a_trial(tmp_path: Path) -> None:
    dest = tmp_path / "quickstart"
    nl = example_cli(tmp_path, "quickstart", [('command = "python train.py"', 'command = "python probe.py"')])
    nl("prepare")
    assert (dest / "data" / "select.npz").is_file() and (dest / "data" / "test.npz").is_file()
    seen = trial_visibility(nl, dest)
    assert seen == {"val_loss": 1.0, "val_mean_rank": 1.0, "peak_memory_gb": 0.01, "train_readable": 1.0, "val_readable": 1.0,
                    "test_readable": 0.0, "select_readable": 0.0, "select_loaded": 0.0}
