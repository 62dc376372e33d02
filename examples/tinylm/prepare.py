"""Data preparation and the fixed evaluation for the tinylm example.

This file is PROTECTED: the agent never edits it. It does two things:

1. `python prepare.py` checks the shipped corpus (corpus.txt.xz, public-domain English: the
   King James Bible, the Jargon File 4.4.7 and Bierce's Devil's Dictionary; built once by
   build_corpus.py) against its SHA-256, decompresses it and cuts it into 16 KiB blocks:
   every 20th block goes to val, the block 10 after it to test, the rest to train. It writes
   data/{train,val,test}.bin (raw bytes). It is idempotent (pass --force to rewrite).
2. train.py imports `load_split`, `evaluate_bpb` and `write_metrics` from here, so every
   experiment is scored the same way: bits per byte on the first EVAL_BYTES of the split, the
   model predicting each byte from up to SEQ_LEN bytes before it (non-overlapping windows). As
   Karpathy defines val_bpb: the summed cross-entropy in nats over all predicted targets,
   divided by the number of target bytes and by ln 2. Tokens here are bytes, so the count of
   target bytes is the count of targets and the metric does not depend on a tokenizer. It also
   returns each window's bits per byte with the window's byte count as its weight
   ("per_example", "per_example_weight"; their weighted mean is val_bpb), which `write_metrics`
   hands to nightlab in metrics.json.
"""

import hashlib
import json
import lzma
import math
import os
import sys

import numpy as np

# ---------------------------------------------------------------------------
# Constants (fixed: changing them changes the task)

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus.txt.xz")
CORPUS_SHA256 = "735c721b7086a6f111d7484b219ec4bda8c8c77e1e79ca6123498e6ed47fe848"
DATA_DIR = "data"             # relative to the current directory
SPLITS = ("train", "val", "test")
BLOCK_BYTES = 16 * 1024       # the unit of the split
SPLIT_EVERY = 20              # block i goes to val if i % 20 == 0, to test if i % 20 == 10
VOCAB_SIZE = 256              # byte-level: a token is a byte
SEQ_LEN = 256                 # context of the evaluation: bytes a prediction may look back on
EVAL_BYTES = 128 * 1024       # predicted bytes per evaluation (512 windows of SEQ_LEN)
EVAL_BATCH = 32               # windows per forward pass (does not change the result)
PER_EXAMPLE_JSON_MAX = 20_000 # longer per-example vectors are written as .npy files, not JSON

# ---------------------------------------------------------------------------
# Data preparation (run once)

def _path(name):
    return os.path.join(DATA_DIR, f"{name}.bin")


def read_corpus():
    """The corpus as bytes, after checking the compressed file's SHA-256."""
    with open(CORPUS, "rb") as f:
        blob = f.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != CORPUS_SHA256:
        raise SystemExit(f"{CORPUS}: sha256 {digest} is not the expected {CORPUS_SHA256} (corrupt or changed)")
    return lzma.decompress(blob)


def split_corpus(text):
    """{"train": bytes, "val": bytes, "test": bytes}: the deterministic block split."""
    parts = {name: [] for name in SPLITS}
    for i in range(0, math.ceil(len(text) / BLOCK_BYTES)):
        block = text[i * BLOCK_BYTES:(i + 1) * BLOCK_BYTES]
        r = i % SPLIT_EVERY
        parts["val" if r == 0 else "test" if r == SPLIT_EVERY // 2 else "train"].append(block)
    return {name: b"".join(blocks) for name, blocks in parts.items()}


def prepare(force=False):
    """Write data/{train,val,test}.bin; does nothing if they are already there."""
    if not force and all(os.path.isfile(_path(name)) for name in SPLITS):
        print(f"{DATA_DIR}/ already prepared (pass --force to rewrite)")
        return
    splits = split_corpus(read_corpus())         # checks the corpus before writing anything
    os.makedirs(DATA_DIR, exist_ok=True)
    for name, data in splits.items():
        tmp = _path(name) + ".tmp"
        with open(tmp, "wb") as f:                # write-then-rename: never a half-written file
            f.write(data)
        os.replace(tmp, _path(name))
        print(f"{_path(name)}: {len(data):,} bytes")

# ---------------------------------------------------------------------------
# Loading and the fixed evaluation (imported by train.py)

def load_split(name):
    """The split's bytes as a uint8 numpy array."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r} (one of {', '.join(SPLITS)})")
    path = _path(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python prepare.py` (or `nightlab prepare`) first")
    return np.fromfile(path, dtype=np.uint8)


def evaluate_bpb(model, split="val"):
    """Bits per byte of `model` on the first EVAL_BYTES of a split.

    `model(x)` takes a LongTensor (B, T) of bytes, T <= SEQ_LEN, and returns logits (B, T, 256):
    position t predicts byte t+1 from bytes 0..t only. Returns {"<split>_bpb": float,
    "per_example": {"<split>_bpb": each window's bits per byte}, "per_example_weight":
    {"<split>_bpb": each window's count of predicted bytes}}; <split>_bpb is the sum of the
    windows' nats over the sum of their bytes, over ln 2: the weighted mean of the windows' values.
    """
    import torch
    import torch.nn.functional as F

    data = load_split(split)
    n_windows = EVAL_BYTES // SEQ_LEN
    if len(data) < n_windows * SEQ_LEN + 1:
        raise ValueError(f"split {split!r} is too small for the evaluation")
    starts = np.arange(n_windows) * SEQ_LEN
    idx = starts[:, None] + np.arange(SEQ_LEN + 1)[None, :]
    windows = torch.from_numpy(data[idx].astype(np.int64))
    nats, counts = [], []                         # per window
    with torch.no_grad():
        for i in range(0, n_windows, EVAL_BATCH):
            batch = windows[i:i + EVAL_BATCH]
            x, y = batch[:, :-1], batch[:, 1:]
            logits = model(x)
            if tuple(logits.shape) != (x.shape[0], SEQ_LEN, VOCAB_SIZE):
                raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, "
                                 f"expected {(x.shape[0], SEQ_LEN, VOCAB_SIZE)}")
            logits = logits.double()
            if not torch.isfinite(logits).all():
                raise ValueError("model returned NaN or inf logits")
            per_byte = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1), reduction="none")
            nats.append(per_byte.view(y.shape).sum(dim=1).numpy())
            counts.append(np.full(len(y), y.shape[1], dtype=np.float64))
    nats, counts = np.concatenate(nats), np.concatenate(counts)
    name = f"{split}_bpb"
    return {name: float(nats.sum() / (counts.sum() * math.log(2))),
            "per_example": {name: nats / (counts * math.log(2))}, "per_example_weight": {name: counts}}


def write_metrics(results):
    """Write the evaluation's results to $NIGHTLAB_RUN_DIR/metrics.json, where nightlab reads them
    (the stdout summary block still carries the same scalars). Without NIGHTLAB_RUN_DIR (a run
    by hand) it writes nothing; returns the path written, or None.

    Per-example vectors longer than PER_EXAMPLE_JSON_MAX go to per_example/<name>.npy (and
    <name>.weight.npy) beside it instead of into the JSON. The file appears whole or not at all.
    """
    run_dir = os.environ.get("NIGHTLAB_RUN_DIR")
    if not run_dir:
        return None
    out = {k: float(v) for k, v in results.items() if k not in ("per_example", "per_example_weight")}
    for key, suffix in (("per_example", ""), ("per_example_weight", ".weight")):
        for name, values in results.get(key, {}).items():
            values = np.asarray(values, dtype=np.float64).ravel()
            if len(values) > PER_EXAMPLE_JSON_MAX:
                folder = os.path.join(run_dir, "per_example")
                os.makedirs(folder, exist_ok=True)
                path = os.path.join(folder, f"{name}{suffix}.npy")
                with open(path + ".tmp", "wb") as f:
                    np.save(f, values)
                os.replace(path + ".tmp", path)
            else:
                out.setdefault(key, {})[name] = values.tolist()
    path = os.path.join(run_dir, "metrics.json")
    with open(path + ".tmp", "w") as f:           # write-then-rename: nightlab never reads half a file
        json.dump(out, f)
    os.replace(path + ".tmp", path)
    return path


if __name__ == "__main__":
    prepare(force="--force" in sys.argv[1:])
