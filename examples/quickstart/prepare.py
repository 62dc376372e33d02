"""
Data preparation and the fixed evaluation for the nightlab quickstart.

This file is PROTECTED: the agent never edits it. It does two things:

1. `python prepare.py` writes a deterministic split of scikit-learn's bundled
   handwritten digits (1,797 8x8 images, 10 classes; no download) to
   data/{train,select,val,test}.npz (40/20/20/20, stratified, fixed seeds, pixels
   scaled to [0, 1]). val and test are cut first, exactly as before the select
   split existed; select, as large as val, is then cut out of what was train
   (which keeps the rest: 717 images). It is idempotent:
   splits already written are left alone (pass --force to rewrite them).
2. train.py imports `load_split`, `evaluate` and `write_metrics` from here, so every
   experiment is scored the same way: `evaluate(predict_proba)` returns the mean
   cross-entropy (natural log) and the accuracy on the validation split, and the
   cross-entropy of every validation image ("per_example", in a fixed order);
   `write_metrics` hands them to nightlab in $NIGHTLAB_RUN_DIR/metrics.json.

The select split is nightlab's selection split ([data] select): no trial sees it.
`nightlab verify --select` sets NIGHTLAB_SPLIT=select and train.py, trained as usual,
is scored on it instead of val (`select_loss`).
"""

import json
import os
import sys

import numpy as np

# ---------------------------------------------------------------------------
# Constants (fixed: changing them changes the task)

DATA_DIR = "data"             # relative to the current directory
SPLIT_SEED = 1337             # seed of the stratified split into train, val and test
SELECT_SEED = 1338            # seed of the stratified cut of the select split out of train
SPLITS = ("train", "select", "val", "test")
VAL_FRACTION = 0.2            # of all images
TEST_FRACTION = 0.2           # of all images
NUM_CLASSES = 10
NUM_FEATURES = 64             # 8x8 pixels
PROB_EPS = 1e-7               # probabilities are clipped to [PROB_EPS, 1] before the log
PER_EXAMPLE_JSON_MAX = 20_000 # longer per-example vectors are written as .npy files, not JSON

# ---------------------------------------------------------------------------
# Data preparation (run once)

def _path(name):
    return os.path.join(DATA_DIR, f"{name}.npz")


def prepare(force=False):
    """Write data/{train,select,val,test}.npz; does nothing if they are already there."""
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
    X_train, X_select, y_train, y_select = train_test_split(   # val and test are as they were
        X_train, y_train, test_size=len(y_val), stratify=y_train, random_state=SELECT_SEED)
    os.makedirs(DATA_DIR, exist_ok=True)
    for name, (Xs, ys) in zip(SPLITS, [(X_train, y_train), (X_select, y_select), (X_val, y_val), (X_test, y_test)]):
        tmp = _path(name) + ".tmp"
        with open(tmp, "wb") as f:                # write-then-rename: never a half-written file
            np.savez(f, X=Xs, y=ys)
        os.replace(tmp, _path(name))
        print(f"{_path(name)}: {len(ys)} examples")

# ---------------------------------------------------------------------------
# Loading and the fixed evaluation (imported by train.py)

def load_split(name):
    """Return (X, y) for "train", "select", "val" or "test": X float32 (n, 64) in [0, 1], y int64 (n,)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r} (one of {', '.join(SPLITS)})")
    path = _path(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python prepare.py` (or `nightlab prepare`) first")
    with np.load(path) as data:
        return data["X"], data["y"]


def evaluate(predict_proba, split="val"):
    """Score a model on a split; `predict_proba(X)` must return (n, 10) class probabilities.

    Returns {"val_loss": mean cross-entropy (natural log), "val_accuracy": fraction correct,
    "per_example": {"val_loss": the cross-entropy of each image, in the split's order}} (names
    prefixed by the split's: "select_loss" on the select split). val_loss is the mean of its
    per-example values. Rows that are not probability distributions are an error, so the loss
    cannot be gamed by unnormalised outputs.
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
    losses = -np.log(p_true)
    return {
        f"{split}_loss": float(losses.mean()),
        f"{split}_accuracy": float((p.argmax(axis=1) == y).mean()),
        "per_example": {f"{split}_loss": losses},
    }


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
