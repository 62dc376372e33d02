"""
Data preparation and the fixed evaluation for the nightlab quickstart.

This file is PROTECTED: the agent never edits it. It does two things:

1. `python prepare.py` writes a deterministic split of scikit-learn's bundled
   handwritten digits (1,797 8x8 images, 10 classes; no download) to
   data/train.npz, data/val.npz and data/test.npz (60/20/20, stratified, fixed
   seed, pixels scaled to [0, 1]). It is idempotent: splits already written are
   left alone (pass --force to rewrite them).
2. train.py imports `load_split` and `evaluate` from here, so every experiment is
   scored the same way: `evaluate(predict_proba)` returns the mean cross-entropy
   (natural log) and the accuracy on the validation split.
"""

import os
import sys

import numpy as np

# ---------------------------------------------------------------------------
# Constants (fixed: changing them changes the task)

DATA_DIR = "data"             # relative to the current directory
SPLIT_SEED = 1337             # seed of the stratified split
SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.2            # of all images
TEST_FRACTION = 0.2           # of all images
NUM_CLASSES = 10
NUM_FEATURES = 64             # 8x8 pixels
PROB_EPS = 1e-7               # probabilities are clipped to [PROB_EPS, 1] before the log

# ---------------------------------------------------------------------------
# Data preparation (run once)

def _path(name):
    return os.path.join(DATA_DIR, f"{name}.npz")


def prepare(force=False):
    """Write data/{train,val,test}.npz; does nothing if they are already there."""
    if not force and all(os.path.isfile(_path(name)) for name in SPLITS):
        print(f"{DATA_DIR}/ already prepared (pass --force to rewrite)")
        return
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)          # X: (1797, 64) ints in 0..16
    X = (X / 16.0).astype(np.float32)             # scale to [0, 1]
    y = y.astype(np.int64)
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)
    X_train, X_val, y_train, y_val = train_test_split(
        X_rest, y_rest, test_size=VAL_FRACTION / (1 - TEST_FRACTION), stratify=y_rest,
        random_state=SPLIT_SEED)
    os.makedirs(DATA_DIR, exist_ok=True)
    for name, (Xs, ys) in zip(SPLITS, [(X_train, y_train), (X_val, y_val), (X_test, y_test)]):
        tmp = _path(name) + ".tmp"
        with open(tmp, "wb") as f:                # write-then-rename: never a half-written file
            np.savez(f, X=Xs, y=ys)
        os.replace(tmp, _path(name))
        print(f"{_path(name)}: {len(ys)} examples")

# ---------------------------------------------------------------------------
# Loading and the fixed evaluation (imported by train.py)

def load_split(name):
    """Return (X, y) for "train", "val" or "test": X float32 (n, 64) in [0, 1], y int64 (n,)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r} (one of {', '.join(SPLITS)})")
    path = _path(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python prepare.py` (or `nightlab prepare`) first")
    with np.load(path) as data:
        return data["X"], data["y"]


def evaluate(predict_proba, split="val"):
    """Score a model on a split; `predict_proba(X)` must return (n, 10) class probabilities.

    Returns {"val_loss": mean cross-entropy (natural log), "val_accuracy": fraction correct}
    (keys prefixed by the split's name). Rows that are not probability distributions are an
    error, so the loss cannot be gamed by unnormalised outputs.
    """
    X, y = load_split(split)
    p = np.asarray(predict_proba(X), dtype=np.float64)
    if p.shape != (len(y), NUM_CLASSES):
        raise ValueError(f"predict_proba returned shape {p.shape}, expected {(len(y), NUM_CLASSES)}")
    if not np.all(np.isfinite(p)):
        raise ValueError("predict_proba returned NaN or inf")
    if p.min() < 0 or np.abs(p.sum(axis=1) - 1).max() > 1e-3:
        raise ValueError("predict_proba must return non-negative rows that sum to 1")
    p_true = np.clip(p[np.arange(len(y)), y], PROB_EPS, 1.0)
    return {
        f"{split}_loss": float(-np.log(p_true).mean()),
        f"{split}_accuracy": float((p.argmax(axis=1) == y).mean()),
    }


if __name__ == "__main__":
    prepare(force="--force" in sys.argv[1:])
