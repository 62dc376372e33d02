"""The retrieval example (examples/retrieval): generated scenes, the caption grammar, the fixed mean rank.

The fast tests generate the data and check it array for array against known digests, parse every val
caption back with the grammar and check it against the scene it describes, and check the evaluation on
embeddings whose ranks are known, with its 1,000 per-scene ranks. The slow one copies the example with
`nightlab init --example`, prepares it, trains the real dual encoder through the CLI at a budget of a
few seconds (its metrics.json holds every rank), scores the select split with NIGHTLAB_SPLIT=select,
and checks that a trial cannot read that split.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from examplekit import check_per_example, digest, example_cli, one_optuna_trial, summary, trial_visibility
from nlkit import ROOT, isolated_env

RETRIEVAL = ROOT / "examples" / "retrieval"
# Digests of the generated arrays (name, dtype, shape and bytes of each, in name order): a change
# of the generator, or of numpy's random streams, changes the task and must show up here.
SPLIT_DIGEST = {
    "train": "4a7cc1ba08ac5cb30507f644afa7257469ba7f76aaa7f18d781b2ee8fe694638",
    "val": "5406457008d6116b5bede43cac64cf6cb9d417d6868ed156e4c7ff773a8e27d9",
    "test": "1d86ea8737c2954c3c36fe74b7ac41c0e9ca8ea2eb8ac289b8e136b78cab7194",
    "select": "9ee7b26a3f918bda55708780013cccbd0121245cdca629780a238abe295a39ba",  # added later; moved no other
}
SIZE_OF = {"large": "large", "big": "large", "small": "small", "little": "small", "tiny": "small"}
ROW_OF = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with prepare.py and the data it generated (once for this module: about 3 s)."""
    root = tmp_path_factory.mktemp("retrieval")
    (root / "prepare.py").write_bytes((RETRIEVAL / "prepare.py").read_bytes())
    proc = subprocess.run([sys.executable, "prepare.py"], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(scope="module")
def prep():
    """examples/retrieval/prepare.py as a module (it imports numpy only; torch only inside the evaluation)."""
    spec = importlib.util.spec_from_file_location("retrieval_prepare", RETRIEVAL / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_retrieval_data_is_deterministic_and_prepare_is_idempotent(prepared: Path) -> None:
    assert {name: digest(prepared / "data" / f"{name}.npz") for name in SPLIT_DIGEST} == SPLIT_DIGEST
    with np.load(prepared / "data" / "val.npz") as f:
        assert f["images"].shape == (1000, 3, 32, 32) and f["images"].dtype == np.uint8
        assert f["tokens"].shape == (1000, 28) and f["boxes"].shape == (1000, 4, 4)
    assert not list((prepared / "data").glob("*.tmp"))
    mtime = (prepared / "data" / "train.npz").stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "prepare.py"], cwd=prepared, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "already prepared" in proc.stdout
    assert (prepared / "data" / "train.npz").stat().st_mtime_ns == mtime
    # data/ from before the select split existed: prepare adds it and leaves the other splits alone
    (prepared / "data" / "select.npz").unlink()
    proc = subprocess.run([sys.executable, "prepare.py"], cwd=prepared, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "select.npz" in proc.stdout and "train.npz" not in proc.stdout
    assert (prepared / "data" / "train.npz").stat().st_mtime_ns == mtime
    assert digest(prepared / "data" / "select.npz") == SPLIT_DIGEST["select"]


def parse_caption(text: str) -> list[dict]:
    """A caption's phrases as attribute dicts; fails the test on any word out of the grammar."""
    phrase_re = re.compile(r"^(a|an) (?:(large|big|small|little|tiny) )?(?:(\w+) )?(\w+)"
                           r"(?: (at|on|in) the (\w+)(?: (left|right))?)?$")
    parts = re.split(r", | and ", text)
    assert 2 <= len(parts) <= 3, text
    phrases = []
    for part in parts:
        m = phrase_re.match(part)
        assert m, f"{part!r} of {text!r} is out of the grammar"
        article, size, colour, noun, prep, where, side = m.groups()
        assert article == ("an" if (size or colour or noun)[0] in "aeiou" else "a"), text
        cell = None
        if where in ("center", "middle"):
            assert prep == "in" and side is None, text
            cell = (1, 1)
        elif where in ("left", "right"):
            assert prep == "on" and side is None, text
            cell = (1, 0 if where == "left" else 2)
        elif where is not None:
            assert prep == "at" and (side or where in ("top", "bottom")), text  # "upper"/"lower" only in a corner
            cell = (ROW_OF[where], {None: 1, "left": 0, "right": 2}[side])
        phrases.append({"size": SIZE_OF.get(size), "colour": colour, "shape": noun, "cell": cell})
    return phrases


def test_retrieval_captions_follow_the_grammar_and_describe_their_scene(prep) -> None:
    assert prep.VOCAB[0] == "<pad>" and len(set(prep.VOCAB)) == prep.VOCAB_SIZE < 64
    rng = np.random.default_rng(prep.SPLIT_SEED["val"])  # the val split's own stream, scene by scene
    lengths = []
    for _ in range(300):
        _, objects = prep.draw_scene(rng)
        words = prep.caption(rng, objects)
        lengths.append(len(words))
        text = prep.decode(prep.tokenize(words))
        described = parse_caption(text)
        assert len(described) <= len(objects)
        for phrase in described:  # every phrase is true of some object of the scene
            assert any(all(phrase[k] in (None, "shape", obj[k]) for k in phrase) for obj in objects), text
    assert max(lengths) <= prep.MAX_TOKENS and min(lengths) >= 5


def test_retrieval_expert_heatmaps_cover_the_object_boxes(prep) -> None:
    boxes = np.full((2, prep.MAX_OBJECTS, 4), -1, np.int16)
    boxes[0, 0] = (2, 3, 6, 8)
    boxes[0, 1] = (20, 20, 22, 21)
    heat = prep.expert_heatmaps(boxes)
    assert heat.shape == (2, 1, 32, 32) and heat.dtype == np.float32
    assert heat[0, 0, 3:8, 2:6].all() and heat[0, 0, 20, 20:22].all()
    assert heat[0].sum() == 4 * 5 + 2 * 1 and heat[1].sum() == 0


def test_retrieval_evaluation_ranks_ties_half_and_is_fixed(prep, prepared: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    sim = np.array([[0.9, 0.1, 0.9], [0.5, 0.2, 0.7], [0.0, 0.0, 1.0]])
    assert prep._ranks(sim).tolist() == [1.5, 3.0, 1.0]  # a tie with the true partner counts half
    monkeypatch.chdir(prepared)

    def constant(x):
        return torch.ones(len(x), 8)

    res = prep.evaluate_retrieval(constant, constant)  # every candidate ties: the middle rank of 1,000
    assert res["val_mean_rank"] == 500.5 and res["val_r10"] == 0.0 and res["val_median_rank"] == 500.5
    assert (res["per_example"]["val_mean_rank"] == 500.5).all()

    def colour_sum(x):  # a crude but real image encoder
        return x.mean(dim=(2, 3))

    def bag(t):
        return torch.nn.functional.one_hot(t, prep.VOCAB_SIZE).float().sum(1)[:, 9:12]

    first, second = prep.evaluate_retrieval(colour_sum, bag), prep.evaluate_retrieval(colour_sum, bag)
    ranks = first.pop("per_example")["val_mean_rank"]
    assert np.array_equal(ranks, second.pop("per_example")["val_mean_rank"])
    assert first == second and set(first) == {f"val_{k}" for k in (
        "mean_rank", "r1", "r5", "r10", "median_rank", "i2t_mean_rank", "t2i_mean_rank")}
    assert first["val_mean_rank"] == pytest.approx((first["val_i2t_mean_rank"] + first["val_t2i_mean_rank"]) / 2)
    # one value per scene: the mean of its image->text and text->image ranks (from 1 to 1,000 in steps of a
    # quarter: each rank counts a tie as half); the metric is exactly their mean
    assert ranks.shape == (1000,) and ranks.min() >= 1.0 and ranks.max() <= 1000.0 and (ranks * 4 % 1 == 0).all()
    assert ranks.mean() == pytest.approx(first["val_mean_rank"], rel=1e-12)
    assert ranks.mean() == pytest.approx((first["val_i2t_mean_rank"] + first["val_t2i_mean_rank"]) / 2, rel=1e-12)

    selected = prep.evaluate_retrieval(colour_sum, bag, "select")  # the same encoders on the select scenes
    assert set(selected["per_example"]) == {"select_mean_rank"} and "val_mean_rank" not in selected
    assert selected["per_example"]["select_mean_rank"].mean() == selected["select_mean_rank"]
    assert selected["select_mean_rank"] != first["val_mean_rank"]


def test_retrieval_write_metrics_hands_nightlab_every_rank(prep, prepared: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.chdir(prepared)
    monkeypatch.setenv("NIGHTLAB_RUN_DIR", str(tmp_path))
    generator = torch.Generator().manual_seed(0)
    image_proj, text_proj = torch.randn(3, 16, generator=generator), torch.randn(prep.VOCAB_SIZE, 16, generator=generator)
    res = prep.evaluate_retrieval(lambda x: x.mean(dim=(2, 3)) @ image_proj,
                                  lambda t: torch.nn.functional.one_hot(t, prep.VOCAB_SIZE).float().sum(1) @ text_proj)
    prep.write_metrics(res)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ranks = check_per_example(metrics, "val_mean_rank", 1000)
    assert metrics["val_mean_rank"] == res["val_mean_rank"] and metrics["val_r10"] == res["val_r10"]
    assert np.array_equal(ranks, res["per_example"]["val_mean_rank"])


def test_retrieval_config_loads_and_its_search_space_matches_train_py() -> None:
    from nightlab.agents.optuna import build_space
    from nightlab.config import load

    cfg = load(RETRIEVAL / "nightlab.toml")
    assert cfg.metric.name == "val_mean_rank" and cfg.metric.goal == "minimize"
    assert 60 <= cfg.run.budget_s <= 120 and cfg.project.protected == ["prepare.py"]
    assert cfg.data.test == ["data/test.npz"] and cfg.phases.allow_web == [5]
    assert cfg.data.select == ["data/select.npz"]  # hidden from trials like test
    space = build_space(RETRIEVAL, cfg.project.editable, cfg.agent.search)
    assert set(cfg.agent.search) <= set(space)  # every override names a knob of train.py
    assert {"LEARNING_RATE", "BATCH_SIZE", "LOGIT_SCALE_MAX", "HEATMAP_WEIGHT", "TEXT_LAYERS"} <= set(space)
    assert all(dim["baseline"] in dim["choices"] for dim in space.values() if dim["kind"] == "cat")
    assert all(dim["low"] <= dim["baseline"] <= dim["high"] for dim in space.values() if dim["kind"] != "cat")
    phases = re.findall(r"^## Phase (\d) — (.+)$", (RETRIEVAL / "program.md").read_text(), re.MULTILINE)
    assert [int(n) for n, _ in phases] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_retrieval_trains_through_the_cli(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    dest = tmp_path / "retrieval"
    nl = example_cli(tmp_path, "retrieval", [("budget_s = 60", "budget_s = 8"), ("noise_runs = 3", "noise_runs = 1")])
    nl("prepare")
    assert {name: digest(dest / "data" / f"{name}.npz") for name in SPLIT_DIGEST} == SPLIT_DIGEST

    out = nl("trial", "--record").stdout
    assert "val_mean_rank" in out and "val_r1" in out and "logit_scale" in out
    [run_dir] = (dest / ".nightlab" / "manual").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    check_per_example(metrics, "val_mean_rank", 1000)
    assert summary((run_dir / "run.log").read_text())["val_mean_rank"] == pytest.approx(metrics["val_mean_rank"], rel=1e-6)

    # NIGHTLAB_SPLIT=select (what `nightlab verify --select` sets): trained as usual, scored on the select split
    select_dir = tmp_path / "select-run"
    select_dir.mkdir()
    env = isolated_env(tmp_path / "home") | {"NIGHTLAB_SPLIT": "select", "NIGHTLAB_BUDGET_S": "6",
                                             "NIGHTLAB_RUN_DIR": str(select_dir)}
    proc = subprocess.run([sys.executable, "train.py"], cwd=dest, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed, metrics = summary(proc.stdout), json.loads((select_dir / "metrics.json").read_text())
    assert "val_mean_rank" not in printed and "val_mean_rank" not in metrics
    check_per_example(metrics, "select_mean_rank", 1000)
    assert printed["select_mean_rank"] == pytest.approx(metrics["select_mean_rank"], rel=1e-6)

    base = one_optuna_trial(nl)[0]
    # a few seconds of training: how far it gets depends on how busy the machine is (a loaded one gives
    # an 8 s run under 20 steps, near chance, 500.5), so only the range is checked here
    assert 1.0 <= base["metric"] <= 1000.0, base["metrics"]
    assert base["metrics"]["num_steps"] >= 1 and base["metrics"]["num_params_M"] > 0.5
    assert 0.0 <= base["metrics"]["val_r1"] <= base["metrics"]["val_r5"] <= base["metrics"]["val_r10"] <= 1.0

    # and a trial cannot read the select split (nor test), though prepare wrote both
    edit = dest / "nightlab.toml"
    edit.write_text(edit.read_text().replace('command = "python train.py"', 'command = "python probe.py"'))
    seen = trial_visibility(nl, dest)
    assert seen["train_readable"] == seen["val_readable"] == 1.0
    assert seen["test_readable"] == seen["select_readable"] == seen["select_loaded"] == 0.0
