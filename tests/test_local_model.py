"""A real small model drives the openai agent: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) on llama.cpp's server (xllamacpp)
on loopback, two trials of the bundled quickstart through the real CLI. The model writes its tool calls however
it likes (structured, or as text the server may not convert); at least one trial must reach training.

Kept short for the suite: a two-line program.md, one baseline run, a 2 s budget, replies of at most 256 tokens.
The model (1.1 GB) is downloaded once into the cache outside the repository (tests/localmodel.py).
"""

from __future__ import annotations

import json
import os

import pytest

import localmodel
from examplekit import example_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a loaded CPU makes the model slow
TINY_PROGRAM = """# quickstart, briefly

Make `val_loss` lower: change ONE of the UPPER_CASE knobs at the top of train.py (the learning rate, the batch
size, the hidden size, the number of epochs). Keep everything else as it is.
"""


def test_a_real_small_model_reaches_training(tmp_path) -> None:
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("xllamacpp is missing in CI: `make dev` installs it (the dev extra)")
        pytest.skip("xllamacpp is not installed (`make dev` installs it)")
    model = localmodel.ensure()  # downloads once; checks the sha256 every time
    assert localmodel.sha256(model) == localmodel.SHA256
    with localmodel.serve(model, ctx=8192) as url:
        nl = example_cli(tmp_path, "quickstart", [
            ('program = "program.md"', 'program = "tiny.md"'),
            ("noise_runs = 5", "noise_runs = 1"), ("confirm = 2", "confirm = 0"),
            ('name = "optuna"', f'name = "openai"\nmodel = "{localmodel.NAME}"\nbase_url = "{url}"\n'
                                'reply_tokens = 256\nmax_turns = 6\ntemperature = 0.2\ntimeout_s = 600'),
        ], files={"tiny.md": TINY_PROGRAM})
        nl("prepare")
        nl("run", "--tag", "t", "--max-trials", "2", "--budget", "2", timeout=1200)
        log = json.loads(nl("log", "--tag", "t", "--json").stdout)
    trials = log[1:]
    assert [t["n"] for t in trials] == [1, 2] and all(t["agent_seconds"] > 0 for t in trials)
    assert all(t["agent"] == f"openai {localmodel.NAME} @ {url}" for t in trials)
    reached = [t for t in trials if t["status"] != "rejected"]
    assert reached, [t["reason"] for t in trials]  # at least one trial trained: its change was measured
    assert all(t["metric"] is not None or t["status"] in ("crash", "timeout", "invalid") for t in reached)
