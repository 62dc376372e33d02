"""The torch examples (examples/tinylm): the shipped corpus, the deterministic split, and real trials.

The fast tests check the corpus file and the data preparation byte for byte, and the fixed
evaluation's per-window bits per byte on a small fixed model. The slow ones copy the example with
`nightlab init --example`, prepare it, and train the real model through the CLI at a budget of a
few seconds (`nightlab trial`, whose metrics.json holds each window's bpb and byte count, then a
baseline and one optuna trial).
"""

from __future__ import annotations

import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

from examplekit import (
    CORPUS_SHA256,
    SPLIT_SHA256,
    TINYLM,
    check_bpb_evaluation,
    check_per_example,
    example_cli,
    one_optuna_trial,
    sha256,
    summary,
)

CORPUS_TEXT_BYTES = 6_623_170


def test_tinylm_corpus_is_intact_and_small() -> None:
    corpus = TINYLM / "corpus.txt.xz"
    assert corpus.stat().st_size <= 5 * 1024 * 1024
    assert sha256(corpus) == CORPUS_SHA256
    assert f'CORPUS_SHA256 = "{CORPUS_SHA256}"' in (TINYLM / "prepare.py").read_text()
    text = lzma.decompress(corpus.read_bytes())
    assert len(text) == CORPUS_TEXT_BYTES
    decoded = text.decode("utf-8")  # valid UTF-8 throughout
    for marker in ("In the beginning God created the heaven and the earth.", "The Jargon File",
                   "THE DEVIL'S DICTIONARY"):
        assert marker in decoded


def test_tinylm_prepare_is_deterministic_and_refuses_a_changed_corpus(tmp_path: Path) -> None:
    for name in ("prepare.py", "corpus.txt.xz"):
        (tmp_path / name).write_bytes((TINYLM / name).read_bytes())
    proc = subprocess.run([sys.executable, "prepare.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {name: sha256(tmp_path / "data" / f"{name}.bin") for name in SPLIT_SHA256} == SPLIT_SHA256
    sizes = {name: (tmp_path / "data" / f"{name}.bin").stat().st_size for name in SPLIT_SHA256}
    assert sum(sizes.values()) == CORPUS_TEXT_BYTES and sizes["val"] > 128 * 1024 + 256 and sizes["test"] > 128 * 1024 + 256

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "prepare.py").write_bytes((TINYLM / "prepare.py").read_bytes())
    blob = bytearray((TINYLM / "corpus.txt.xz").read_bytes())
    blob[1000] ^= 1
    (corrupt / "corpus.txt.xz").write_bytes(bytes(blob))
    proc = subprocess.run([sys.executable, "prepare.py"], cwd=corrupt, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "sha256" in proc.stderr and not (corrupt / "data").exists()


def test_tinylm_evaluation_reports_every_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("prepare.py", "corpus.txt.xz"):
        (tmp_path / name).write_bytes((TINYLM / name).read_bytes())
    proc = subprocess.run([sys.executable, "prepare.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    check_bpb_evaluation(TINYLM, tmp_path, 512, 256, monkeypatch)  # 128 KiB in windows of 256 bytes


def test_tinylm_config_loads_and_its_search_space_matches_train_py() -> None:
    from nightlab.agents.optuna import build_space
    from nightlab.config import load

    cfg = load(TINYLM / "nightlab.toml")
    assert cfg.metric.name == "val_bpb" and cfg.metric.goal == "minimize"
    assert 60 <= cfg.run.budget_s <= 120 and "corpus.txt.xz" in cfg.project.protected
    space = build_space(TINYLM, cfg.project.editable, cfg.agent.search)
    assert set(cfg.agent.search) <= set(space)  # every override names a knob of train.py
    assert {"N_LAYER", "N_EMBD", "LEARNING_RATE", "BATCH_SIZE"} <= set(space)
    assert all(dim["baseline"] in dim["choices"] for dim in space.values() if dim["kind"] == "cat")


def test_nightlab_never_imports_torch() -> None:
    code = ("import sys, nightlab.cli, nightlab.session, nightlab.loop, nightlab.agents.optuna; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_tinylm_trains_through_the_cli(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    dest = tmp_path / "tinylm"
    nl = example_cli(tmp_path, "tinylm", [("budget_s = 60", "budget_s = 8"), ("noise_runs = 3", "noise_runs = 1")])
    nl("prepare")
    assert {name: sha256(dest / "data" / f"{name}.bin") for name in SPLIT_SHA256} == SPLIT_SHA256

    out = nl("trial", "--record").stdout
    assert "val_bpb" in out and "num_steps" in out
    [run_dir] = (dest / ".nightlab" / "manual").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    check_per_example(metrics, "val_bpb", 512, weighted=True)
    assert summary((run_dir / "run.log").read_text())["val_bpb"] == pytest.approx(metrics["val_bpb"], rel=1e-6)

    base = one_optuna_trial(nl)[0]
    # a few seconds of training (a handful of warm-up steps on a busy machine): far from converged,
    # and near uniform (8 bits per byte), but a real, finite bits-per-byte
    assert 2.0 < base["metric"] < 9.0
    assert base["metrics"]["num_steps"] >= 1 and base["metrics"]["num_params_M"] > 0.5
