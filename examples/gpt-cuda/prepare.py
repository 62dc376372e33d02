"""Data preparation and the fixed evaluation for the gpt-cuda example.

This file is PROTECTED: the agent never edits it. It does two things:

1. `python prepare.py` cuts a text into data/{train,val,test}.bin (raw bytes): 16 KiB blocks,
   every 20th to val, the block 10 after it to test, the rest to train. The text is the
   shipped corpus.txt.xz (public-domain English, the same file as the tinylm example, checked
   against its SHA-256) or, with `--text FILE`, any file of your own (used as bytes, so any
   encoding works). It is idempotent: it rewrites data/ only when the source changed (or with
   --force). data/SOURCE records which text the splits came from.
2. train.py imports `load_split`, `evaluate_bpb` and `write_metrics` from here, so every
   experiment is scored the same way: bits per byte on the first EVAL_BYTES of the split (fewer
   if the split is smaller), the model predicting each byte from up to SEQ_LEN bytes before it
   in non-overlapping windows. As Karpathy defines val_bpb: the summed cross-entropy in nats
   over all predicted targets, divided by the number of target bytes and by ln 2. Tokens are
   bytes, so the metric does not depend on a tokenizer. It also returns each window's bits per
   byte with the window's byte count as its weight ("per_example", "per_example_weight"; their
   weighted mean is val_bpb), which `write_metrics` hands to nightlab in metrics.json.
"""

import argparse
import hashlib
import json
import lzma
import math
import os

import numpy as np

# ---------------------------------------------------------------------------
# Constants (fixed: changing them changes the task)

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus.txt.xz")
CORPUS_SHA256 = "735c721b7086a6f111d7484b219ec4bda8c8c77e1e79ca6123498e6ed47fe848"
DATA_DIR = "data"             # relative to the current directory
SOURCE = os.path.join(DATA_DIR, "SOURCE")
SPLITS = ("train", "val", "test")
BLOCK_BYTES = 16 * 1024       # the unit of the split
SPLIT_EVERY = 20              # block i goes to val if i % 20 == 0, to test if i % 20 == 10
VOCAB_SIZE = 256              # byte-level: a token is a byte
SEQ_LEN = 1024                # context of the evaluation: bytes a prediction may look back on
EVAL_BYTES = 256 * 1024       # predicted bytes per evaluation (256 windows of SEQ_LEN), at most
MIN_EVAL_WINDOWS = 8          # a split too small for this many windows is refused
EVAL_BATCH = 32               # windows per forward pass (does not change the result)
PER_EXAMPLE_JSON_MAX = 20_000 # longer per-example vectors are written as .npy files, not JSON

# ---------------------------------------------------------------------------
# Data preparation (run once)

def _path(name):
    return os.path.join(DATA_DIR, f"{name}.bin")


def read_shipped_corpus():
    """The shipped corpus as bytes, after checking the compressed file's SHA-256."""
    with open(CORPUS, "rb") as f:
        blob = f.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != CORPUS_SHA256:
        raise SystemExit(f"{CORPUS}: sha256 {digest} is not the expected {CORPUS_SHA256} (corrupt or changed)")
    return lzma.decompress(blob)


def split_text(text):
    """{"train": bytes, "val": bytes, "test": bytes}: the deterministic block split."""
    parts = {name: [] for name in SPLITS}
    for i in range(0, math.ceil(len(text) / BLOCK_BYTES)):
        block = text[i * BLOCK_BYTES:(i + 1) * BLOCK_BYTES]
        r = i % SPLIT_EVERY
        parts["val" if r == 0 else "test" if r == SPLIT_EVERY // 2 else "train"].append(block)
    return {name: b"".join(blocks) for name, blocks in parts.items()}


def eval_windows(n_bytes):
    """How many SEQ_LEN windows the evaluation scores in a split of n_bytes."""
    return min(EVAL_BYTES, n_bytes - 1) // SEQ_LEN


def prepare(text_path=None, force=False):
    """Write data/{train,val,test}.bin from the shipped corpus or text_path; skip if already done."""
    if text_path is None:
        text, source = read_shipped_corpus(), f"corpus.txt.xz sha256:{CORPUS_SHA256}"
    else:
        with open(text_path, "rb") as f:
            text = f.read()
        source = f"{os.path.basename(text_path)} sha256:{hashlib.sha256(text).hexdigest()}"
    done = all(os.path.isfile(_path(name)) for name in SPLITS) and os.path.isfile(SOURCE)
    if done and not force and open(SOURCE).read().strip() == source:
        print(f"{DATA_DIR}/ already prepared from {source} (pass --force to rewrite)")
        return
    splits = split_text(text)
    for name in ("val", "test"):
        if eval_windows(len(splits[name])) < MIN_EVAL_WINDOWS:
            raise SystemExit(f"the text is too small: its {name} split has {len(splits[name]):,} bytes, the "
                             f"evaluation needs {MIN_EVAL_WINDOWS * SEQ_LEN + 1:,} (give a text of a few MB)")
    os.makedirs(DATA_DIR, exist_ok=True)
    for name, data in [*splits.items(), ("SOURCE", (source + "\n").encode())]:
        path = SOURCE if name == "SOURCE" else _path(name)
        with open(path + ".tmp", "wb") as f:      # write-then-rename: never a half-written file
            f.write(data)
        os.replace(path + ".tmp", path)
        print(f"{path}: {len(data):,} bytes")

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

    `model(x)` takes a LongTensor (B, T) of bytes on the model's device, T <= SEQ_LEN, and returns
    logits (B, T, 256): position t predicts byte t+1 from bytes 0..t only. The caller chooses the
    precision (e.g. runs this under bf16 autocast); the sums themselves are taken in float64.
    Returns {"<split>_bpb": float, "per_example": {"<split>_bpb": each window's bits per byte},
    "per_example_weight": {"<split>_bpb": each window's count of predicted bytes}}; <split>_bpb is
    the sum of the windows' nats over the sum of their bytes, over ln 2: the weighted mean of the
    windows' values.
    """
    import torch
    import torch.nn.functional as F

    data = load_split(split)
    n_windows = eval_windows(len(data))
    if n_windows < MIN_EVAL_WINDOWS:
        raise ValueError(f"split {split!r} is too small for the evaluation")
    device = next(model.parameters()).device
    idx = (np.arange(n_windows) * SEQ_LEN)[:, None] + np.arange(SEQ_LEN + 1)[None, :]
    windows = torch.from_numpy(data[idx].astype(np.int64)).to(device)
    nats, counts = [], []                         # per window (nats stay on the device until the end)
    with torch.no_grad():
        for i in range(0, n_windows, EVAL_BATCH):
            batch = windows[i:i + EVAL_BATCH]
            x, y = batch[:, :-1], batch[:, 1:]
            logits = model(x)
            if tuple(logits.shape) != (x.shape[0], SEQ_LEN, VOCAB_SIZE):
                raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, "
                                 f"expected {(x.shape[0], SEQ_LEN, VOCAB_SIZE)}")
            with torch.autocast(device.type, enabled=False):  # the caller's autocast must not touch the sum
                logits = logits.double()
                if not torch.isfinite(logits).all():
                    raise ValueError("model returned NaN or inf logits")
                per_byte = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1), reduction="none")
                nats.append(per_byte.view(y.shape).sum(dim=1))
            counts.append(np.full(y.shape[0], y.shape[1], dtype=np.float64))
    nats, counts = torch.cat(nats).cpu().numpy(), np.concatenate(counts)
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
    parser = argparse.ArgumentParser(description="Split a text into data/{train,val,test}.bin.")
    parser.add_argument("--text", metavar="FILE", help="your own text instead of the shipped corpus")
    parser.add_argument("--force", action="store_true", help="rewrite data/ even if it is up to date")
    args = parser.parse_args()
    prepare(args.text, args.force)
