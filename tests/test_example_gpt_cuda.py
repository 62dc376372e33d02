"""examples/gpt-cuda: its config against train.py, the shared corpus, the data split, the no-GPU paths.

No GPU is needed: the fast tests check the files and run prepare.py; train.py is run without CUDA
(one clear line, exit 1) and, in the slow test, through `nightlab trial` in its CPU smoke mode
(GPT_CUDA_SMOKE=1: a tiny model, a real forward, backward, optimizer step and the fixed
evaluation, which writes each window's bpb and byte count to metrics.json). The GPU figures come
from benchmarks/gpt_cuda_device.sh on a GPU machine.
"""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from examplekit import CORPUS_SHA256, SPLIT_SHA256, check_bpb_evaluation, check_per_example, sha256
from nlkit import CLI, ROOT, git, isolated_env

GPT_CUDA = ROOT / "examples" / "gpt-cuda"
DEVICE_SCRIPT = ROOT / "benchmarks" / "gpt_cuda_device.sh"


def train_constants() -> dict:
    from nightlab.agents.constants import find_constants

    return {name: c.value for name, c in find_constants((GPT_CUDA / "train.py").read_bytes()).items()}


def plain_setting(name: str) -> float:
    """A lowercase setting of train.py (`head_dim = 128`), which the optuna agent does not search."""
    m = re.search(rf"^{name} = ([\d.]+)", (GPT_CUDA / "train.py").read_text(), re.MULTILINE)
    assert m, name
    return float(m.group(1))


def test_gpt_cuda_config_matches_train_py_and_fits_one_gpu() -> None:
    from nightlab.agents.optuna import build_space
    from nightlab.config import load

    cfg = load(GPT_CUDA / "nightlab.toml")
    assert cfg.metric.name == "val_bpb" and cfg.metric.goal == "minimize"
    assert cfg.run.budget_s == 300 and cfg.run.budget_s < cfg.run.timeout_s <= 2 * cfg.run.budget_s
    assert [(c.name, c.max) for c in cfg.metric.constraints] == [("peak_memory_gb", 70.0)]
    assert cfg.sandbox.gpus == "all" and cfg.executor.slots == 1
    assert set(cfg.project.protected) == {"prepare.py", "corpus.txt.xz"} and cfg.project.editable == ["train.py"]

    space = build_space(GPT_CUDA, cfg.project.editable, cfg.agent.search)
    assert set(cfg.agent.search) <= set(space)  # every override names a knob of train.py
    assert {"N_LAYER", "N_EMBD", "MLP_RATIO", "TOTAL_BATCH_TOKENS", "LEARNING_RATE", "WARMDOWN_RATIO"} <= set(space)
    assert "DEVICE_BATCH_SIZE" not in space  # memory and speed only: not worth trials
    assert all(dim["baseline"] in dim["choices"] for dim in space.values() if dim["kind"] == "cat")

    # Karpathy-like sizes, and every shape the search can draw is one train.py can build
    k = train_constants()
    seq_len, head_dim = 1024, plain_setting("head_dim")
    assert f"SEQ_LEN = {seq_len} " in (GPT_CUDA / "prepare.py").read_text()
    assert 8 <= k["N_LAYER"] <= 12 and 512 <= k["N_EMBD"] <= 768 and 2**17 <= k["TOTAL_BATCH_TOKENS"] <= 2**19
    assert all(n % head_dim == 0 for n in space["N_EMBD"]["choices"])
    assert all(t % (k["DEVICE_BATCH_SIZE"] * seq_len) == 0 or t < k["DEVICE_BATCH_SIZE"] * seq_len
               for t in space["TOTAL_BATCH_TOKENS"]["choices"])
    assert all(t % seq_len == 0 for t in space["TOTAL_BATCH_TOKENS"]["choices"])


def test_gpt_cuda_mfu_uses_a_known_peak_or_none() -> None:
    """The peak table and its lookup, taken out of train.py (which trains when imported)."""
    tree = ast.parse((GPT_CUDA / "train.py").read_text())
    wanted = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name == "peak_tflops")
              or (isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PEAK_BF16_TFLOPS")]
    assert len(wanted) == 2
    scope: dict = {}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "train.py", "exec"), scope)
    peak = scope["peak_tflops"]
    assert peak("NVIDIA H100 80GB HBM3") == 989.0
    assert peak("NVIDIA H100 PCIe") == 756.0 and peak("NVIDIA H100 NVL") == 835.0
    assert peak("NVIDIA H200") == 989.0 and peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("NVIDIA GeForce RTX 4090") is None  # no guess for a GPU outside the table


def test_gpt_cuda_shares_the_tinylm_corpus_and_init_copies_the_bytes(tmp_path: Path) -> None:
    link = GPT_CUDA / "corpus.txt.xz"
    assert link.is_symlink() and link.resolve() == (ROOT / "examples" / "tinylm" / "corpus.txt.xz").resolve()
    assert f'CORPUS_SHA256 = "{CORPUS_SHA256}"' in (GPT_CUDA / "prepare.py").read_text()

    env = isolated_env(tmp_path / "home")
    dest = tmp_path / "gc"
    proc = subprocess.run([*CLI, "init", str(dest), "--example", "gpt-cuda"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    corpus = dest / "corpus.txt.xz"
    assert corpus.is_file() and not corpus.is_symlink() and sha256(corpus) == CORPUS_SHA256  # the project stands alone
    assert git("ls-files", "-s", "corpus.txt.xz", cwd=dest, env=env).startswith("100644 ")  # a file, not a link


def run_prepare(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "prepare.py", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_gpt_cuda_prepare_splits_like_tinylm_and_takes_a_text_of_ones_own(tmp_path: Path) -> None:
    (tmp_path / "prepare.py").write_bytes((GPT_CUDA / "prepare.py").read_bytes())
    (tmp_path / "corpus.txt.xz").write_bytes((GPT_CUDA / "corpus.txt.xz").read_bytes())
    proc = run_prepare(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {name: sha256(tmp_path / "data" / f"{name}.bin") for name in SPLIT_SHA256} == SPLIT_SHA256
    assert "already prepared" in run_prepare(tmp_path).stdout

    text = (tmp_path / "data" / "train.bin").read_bytes()
    (tmp_path / "mine.txt").write_bytes(text[:2_000_000])
    proc = run_prepare(tmp_path, "--text", "mine.txt")  # a new source rewrites data/
    assert proc.returncode == 0, proc.stderr
    sizes = {name: (tmp_path / "data" / f"{name}.bin").stat().st_size for name in SPLIT_SHA256}
    assert sum(sizes.values()) == 2_000_000 and sizes["val"] > 8 * 1024
    assert (tmp_path / "data" / "SOURCE").read_text().startswith("mine.txt sha256:")

    (tmp_path / "tiny.txt").write_bytes(text[:100_000])
    proc = run_prepare(tmp_path, "--text", "tiny.txt")
    assert proc.returncode != 0 and "too small" in proc.stderr
    assert (tmp_path / "data" / "SOURCE").read_text().startswith("mine.txt")  # left as it was


def test_gpt_cuda_evaluation_reports_every_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "prepare.py").write_bytes((GPT_CUDA / "prepare.py").read_bytes())
    (tmp_path / "corpus.txt.xz").write_bytes((GPT_CUDA / "corpus.txt.xz").read_bytes())
    proc = run_prepare(tmp_path)
    assert proc.returncode == 0, proc.stderr
    check_bpb_evaluation(GPT_CUDA, tmp_path, 256, 1024, monkeypatch)  # 256 KiB in windows of 1,024 bytes


def test_gpt_cuda_without_a_gpu_stops_with_one_clear_line(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    for name in ("prepare.py", "train.py"):
        (tmp_path / name).write_bytes((GPT_CUDA / name).read_bytes())
    env = {k: v for k, v in isolated_env(tmp_path / "home").items() if k != "GPT_CUDA_SMOKE"}
    proc = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs an NVIDIA GPU" in lines[0] and "GPT_CUDA_SMOKE=1" in lines[0]


def test_gpt_cuda_device_script_parses_and_carries_nightlabs_dependencies() -> None:
    proc = subprocess.run(["bash", "-n", str(DEVICE_SCRIPT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    carried = set(re.search(r'CARRIED="([^"]*)"', DEVICE_SCRIPT.read_text()).group(1).split())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = project["dependencies"] + project["optional-dependencies"]["optuna"]
    names = {re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower().replace("_", "-") for req in needed}
    assert names <= carried, f"add {sorted(names - carried)} to CARRIED in {DEVICE_SCRIPT.name}"


@pytest.mark.slow
def test_gpt_cuda_smoke_trains_through_the_cli(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from nightlab.metrics import from_log

    env = isolated_env(tmp_path / "home", {"GPT_CUDA_SMOKE": "1", "COLUMNS": "200"})
    dest = tmp_path / "gc"

    def nl(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([*CLI, *args], cwd=dest if dest.exists() else tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"nightlab {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    nl("init", str(dest), "--example", "gpt-cuda")
    toml = (dest / "nightlab.toml").read_text()
    for old, new in [("budget_s = 300", "budget_s = 6"),
                     ('prepare = "python prepare.py"', 'prepare = "python prepare.py"\nenv = ["GPT_CUDA_SMOKE"]')]:
        assert old in toml
        toml = toml.replace(old, new)
    (dest / "nightlab.toml").write_text(toml)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "smoke config", cwd=dest, env=env)
    nl("prepare")
    nl("trial", "--record")

    logs = list((dest / ".nightlab" / "manual").glob("*/run.log"))
    assert len(logs) == 1
    metrics = from_log(logs[0])
    # a few seconds of a 2-block model: far from trained, below uniform (8 bits), but real and finite
    assert math.isfinite(metrics["val_bpb"]) and 2.0 < metrics["val_bpb"] < 9.0
    assert metrics["num_steps"] >= 1 and metrics["tokens_per_s"] > 0 and metrics["depth"] == 2
    assert "mfu_percent" not in metrics  # no GPU, no peak to divide by: no made-up MFU
    assert "gpu:              none (CPU smoke test)" in logs[0].read_text()
    # the same evaluation path as on a GPU: every window's bpb, weighted by its bytes, in metrics.json
    saved = json.loads((logs[0].parent / "metrics.json").read_text())
    check_per_example(saved, "val_bpb", 256, weighted=True)
    assert saved["val_bpb"] == pytest.approx(metrics["val_bpb"], rel=1e-6)
