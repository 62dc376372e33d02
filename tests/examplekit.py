"""Helpers for the bundled examples' tests: a copy of an example run through the real CLI, what a trial of it
can see, its metrics and per-example values, and the pinned digests of the tinylm corpus and its split.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

from nlkit import CLI, ROOT, git, isolated_env


def example_cli(tmp_path: Path, name: str, config_edits: list[tuple[str, str]], files: dict[str, str] | None = None):
    """Copy a bundled example into tmp_path/name with `nightlab init --example`, replace each `old` text
    of its nightlab.toml (which must be there) by `new`, add `files`, and commit that; returns
    `nl(*args, timeout=300)`, which runs the real CLI in the copy and asserts exit code 0."""
    env = isolated_env(tmp_path / "home") | {"COLUMNS": "200"}
    dest = tmp_path / name

    def nl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([*CLI, *args], cwd=dest if dest.exists() else tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"nightlab {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    nl("init", str(dest), "--example", name)
    toml = (dest / "nightlab.toml").read_text()
    for old, new in config_edits:
        assert old in toml, old
        toml = toml.replace(old, new)
    (dest / "nightlab.toml").write_text(toml)
    for rel, text in (files or {}).items():
        (dest / rel).write_text(text)
    git("add", "-A", cwd=dest, env=env)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a quick config", cwd=dest, env=env)
    return nl


def one_optuna_trial(nl) -> list[dict]:
    """`nightlab run --max-trials 1` (a baseline, then one optuna trial) through `nl` from example_cli,
    at a budget of 8 s; checks the two ledger rows every example must produce and returns the ledger."""
    nl("run", "--tag", "t", "--max-trials", "1", "--budget", "8")
    log = json.loads(nl("log", "--tag", "t", "--json").stdout)
    assert [t["n"] for t in log] == [0, 1] and log[0]["status"] == "baseline"
    assert log[1]["status"] in {"keep", "discard", "crash", "timeout", "invalid"}
    assert "→" in log[1]["description"]  # the optuna agent rewrote the constants of train.py
    if log[1]["status"] in {"keep", "discard"}:  # audited: an honest change of the example is not flagged
        assert (log[1]["audit"], log[1]["findings"]) == ("clean", []), log[1]
    return log


# A trial's view of the data, printed as metric lines: which split files it can read, and whether
# prepare.load_split("select") can load the select split. (A masked path may still "exist" as an
# empty directory, as the bwrap sandbox masks it; what counts is that nothing can be read there.)
PROBE = '''import os
from prepare import load_split
print("val_loss: 1.0")  # the quickstart's metric and constraint; the retrieval example's metric:
print("val_mean_rank: 1.0")
print("peak_memory_gb: 0.01")
for name in ("train", "val", "test", "select"):
    try:
        with open(os.path.join("data", name + ".npz"), "rb") as f:
            readable = len(f.read(4)) == 4
    except OSError:
        readable = False
    print(f"{name}_readable: {int(readable)}")
try:
    load_split("select")
    print("select_loaded: 1")
except Exception as e:
    print("select_loaded: 0")
    print(f"({type(e).__name__}: {e})")
'''


def digest(path: Path) -> str:
    """A split file's digest: the name, dtype, shape and bytes of each array in the .npz."""
    import numpy as np

    h = hashlib.sha256()
    with np.load(path) as f:
        for key in sorted(f.files):
            a = f[key]
            h.update(f"{key}:{a.dtype}:{a.shape};".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_per_example(metrics: dict, name: str, n: int, weighted: bool = False):
    """metrics.json's per-example values of `name`: n of them, finite, and the metric is their (weighted) mean."""
    import numpy as np

    values = np.asarray(metrics["per_example"][name], dtype=np.float64)
    assert values.shape == (n,) and np.isfinite(values).all()
    if weighted:
        weights = np.asarray(metrics["per_example_weight"][name], dtype=np.float64)
        assert weights.shape == (n,) and (weights > 0).all()
        mean = float((weights * values).sum() / weights.sum())
    else:
        assert name not in metrics.get("per_example_weight", {})
        mean = float(values.mean())
    assert mean == pytest.approx(metrics[name], rel=1e-9)
    return values


def summary(stdout: str) -> dict[str, float]:
    """The `name: value` lines of a run's output."""
    return {k: float(v) for k, v in re.findall(r"^(\w+):\s+(\S+)\s*$", stdout, re.MULTILINE)}


def trial_visibility(nl, dest: Path) -> dict[str, float]:
    """What `nightlab trial` (the project's sandbox) shows a run of PROBE in the example copied to dest."""
    (dest / "probe.py").write_text(PROBE)
    out = nl("trial").stdout
    return {k: float(v) for k, v in re.findall(r"^\s+(\w+): (\S+)", out, re.MULTILINE)}


# -- the tinylm corpus (examples/tinylm; examples/gpt-cuda ships the same) ---------------------------------
TINYLM = ROOT / "examples" / "tinylm"
CORPUS_SHA256 = "735c721b7086a6f111d7484b219ec4bda8c8c77e1e79ca6123498e6ed47fe848"  # as build_corpus.py printed it
SPLIT_SHA256 = {
    "train": "085daddf4efd5590d7e0ad879afc454c14d07fe9c6c782541f240f8255f0632f",
    "val": "6b24dd5f8d1504bcda7d217b008d14a8952d10ff0ce0407811a32d842ee5f830",
    "test": "4ceecce1f07d451f219a84fff1799a369c9e7dd5bddbd4a7df90ae6b46c16c28",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_bpb_evaluation(example: Path, cwd: Path, windows: int, window_bytes: int,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An example's evaluate_bpb, on the prepared data in cwd, with a small fixed byte model: each
    window's bpb weighted by its byte count averages to val_bpb, and write_metrics hands both over."""
    torch = pytest.importorskip("torch")
    prep = load_module(example / "prepare.py", f"{example.name}_prepare")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("NIGHTLAB_RUN_DIR", str(cwd))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(256, 8), torch.nn.Linear(8, 256))  # a bigram model
    res = prep.evaluate_bpb(model)
    prep.write_metrics(res)
    metrics = json.loads((cwd / "metrics.json").read_text())
    bpb = check_per_example(metrics, "val_bpb", windows, weighted=True)
    assert metrics["per_example_weight"]["val_bpb"] == [float(window_bytes)] * windows
    assert metrics["val_bpb"] == res["val_bpb"] and 6.0 < res["val_bpb"] < 10.0  # an untrained model: near 8 bits
    assert bpb.std() > 0.01  # the windows differ: per-window values, not one number repeated
    # the metric is the summed nats over the summed bytes: the windows' mean here, as all are full
    assert res["val_bpb"] == pytest.approx(bpb.mean(), rel=1e-12)
