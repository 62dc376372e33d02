"""Data generation and the fixed evaluation for the retrieval example (eCLIP-style).

This file is PROTECTED: the agent never edits it. It does two things:

1. `python prepare.py` draws procedural scenes (2 to 4 coloured shapes on a noisy background,
   one per cell of a 3x3 grid) with numpy from fixed seeds, renders them at 32x32 RGB, and
   writes a compositional caption for each that mentions only 2 or 3 of the objects, sometimes
   without their size, colour, shape or position ("a large red circle at the top left and a
   small blue ring in the center"). Each split (train 10,000, val 1,000, test 1,000 and select
   1,000 pairs) has its own seed, and goes to data/<split>.npz: `images` uint8 (N, 3, 32, 32), `tokens` uint8
   (N, MAX_TOKENS) word ids padded with 0, and `boxes` int16 (N, MAX_OBJECTS, 4), each object's
   x0, y0, x1, y1 in pixels, -1 rows for no object (the "expert annotation", see
   `expert_heatmaps`). It is idempotent: it writes only the splits that are missing (pass
   --force to rewrite them all).
2. train.py imports `load_split`, `evaluate_retrieval` and `write_metrics` from here, so every
   experiment is scored the same way: the mean rank of the true partner among all pairs of the
   split, averaged over image->text and text->image (1 is perfect, about 500 is chance), and
   each scene's own mean rank ("per_example": the mean of its image->text and text->image ranks,
   in the split's order: a scene's two ranks go together, so the scene is the independent unit),
   which `write_metrics` hands to nightlab in metrics.json.

The select split is nightlab's selection split ([data] select): no trial sees it.
`nightlab verify --select` sets NIGHTLAB_SPLIT=select and train.py, trained as usual, is
scored on it instead of val (`select_mean_rank`).
"""

import json
import os
import sys

import numpy as np

# ---------------------------------------------------------------------------
# Constants (fixed: changing them changes the task)

DATA_DIR = "data"             # relative to the current directory
SPLITS = ("train", "val", "test", "select")
SPLIT_SIZE = {"train": 10_000, "val": 1_000, "test": 1_000, "select": 1_000}
SPLIT_SEED = {"train": 1234, "val": 1235, "test": 1236, "select": 1237}
IMAGE_SIZE = 32               # pixels per side, RGB
GRID = 3                      # objects sit in the cells of a GRID x GRID grid, at most one per cell
MIN_OBJECTS, MAX_OBJECTS = 2, 4
MAX_TOKENS = 28               # the longest caption is 26 tokens (3 full phrases, "," and "and")
EVAL_BATCH = 500              # pairs per forward pass in the evaluation (does not change the result)
PER_EXAMPLE_JSON_MAX = 20_000 # longer per-example vectors are written as .npy files, not JSON

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40),
           "purple": (150, 60, 200), "cyan": (40, 200, 210), "orange": (240, 140, 30), "white": (235, 235, 235)}
SHAPES = ("circle", "ring", "square", "diamond", "triangle", "cross")
SIZE_WORDS = {"large": ("large", "big"), "small": ("small", "little", "tiny")}
ROW_WORDS = (("top", "upper"), (), ("bottom", "lower"))    # the middle row has no word of its own
COL_WORDS = (("left",), (), ("right",))
CENTER_WORDS = ("center", "middle")
# How often a caption leaves an attribute out (which makes several images fit one caption).
DROP = {"size": 0.25, "colour": 0.10, "shape": 0.10, "position": 0.20}
VOCAB = ("<pad>", "a", "an", "and", ",", "at", "on", "in", "the",
         "large", "big", "small", "little", "tiny", *COLOURS, *SHAPES, "shape",
         "top", "upper", "bottom", "lower", "left", "right", "center", "middle")
WORD_ID = {w: i for i, w in enumerate(VOCAB)}
VOCAB_SIZE = len(VOCAB)

# ---------------------------------------------------------------------------
# Scenes and captions


def shape_mask(shape, cx, cy, r):
    """Boolean (IMAGE_SIZE, IMAGE_SIZE) mask of one shape centred at (cx, cy) with radius r."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5   # pixel centres
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape == "triangle":                                 # apex up, base 0.8 r below the centre
        return (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / 1.8)
    if shape == "cross":
        bar = 0.33 * r
        return ((np.abs(dx) <= bar) & (np.abs(dy) <= r)) | ((np.abs(dy) <= bar) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def draw_scene(rng):
    """One scene: the image (3, S, S) uint8 and its objects (dicts of shape, colour, size, cell, box)."""
    cell = IMAGE_SIZE / GRID
    img = rng.uniform(0, 60, size=3)[:, None, None] + rng.normal(0, 8, size=(3, IMAGE_SIZE, IMAGE_SIZE))
    objects = []
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    for c in rng.choice(GRID * GRID, size=n, replace=False):
        row, col = divmod(int(c), GRID)
        obj = {"shape": SHAPES[rng.integers(len(SHAPES))], "colour": list(COLOURS)[rng.integers(len(COLOURS))],
               "size": "large" if rng.random() < 0.5 else "small", "cell": (row, col)}
        r = rng.normal(4.3, 0.3) if obj["size"] == "large" else rng.normal(2.6, 0.2)
        cx, cy = (col + 0.5) * cell + rng.uniform(-1.5, 1.5), (row + 0.5) * cell + rng.uniform(-1.5, 1.5)
        rgb = np.clip(np.array(COLOURS[obj["colour"]]) + rng.uniform(-20, 20, size=3), 0, 255)
        img[:, shape_mask(obj["shape"], cx, cy, r)] = rgb[:, None]
        obj["box"] = [int(np.floor(max(0.0, v))) if i < 2 else int(np.ceil(min(IMAGE_SIZE, v)))
                      for i, v in enumerate((cx - r, cy - r, cx + r, cy + r))]
        objects.append(obj)
    return np.clip(img, 0, 255).astype(np.uint8), objects


def position_words(rng, row, col):
    if (row, col) == (1, 1):
        return ["in", "the", CENTER_WORDS[rng.integers(2)]]
    if col == 1:                                            # "at the top", never "at the upper"
        return ["at", "the", ROW_WORDS[row][0]]
    words = [w[rng.integers(len(w))] for w in (ROW_WORDS[row], COL_WORDS[col]) if w]
    return ["on" if row == 1 else "at", "the", *words]


def describe(rng, obj):
    """One noun phrase, e.g. "a large red circle at the top left", with attributes sometimes left out."""
    words = []
    if rng.random() >= DROP["size"]:
        options = SIZE_WORDS[obj["size"]]
        words.append(options[rng.integers(len(options))])
    if rng.random() >= DROP["colour"]:
        words.append(obj["colour"])
    words.append(obj["shape"] if rng.random() >= DROP["shape"] else "shape")
    article = "an" if words[0][0] in "aeiou" else "a"
    tail = position_words(rng, *obj["cell"]) if rng.random() >= DROP["position"] else []
    return [article, *words, *tail]


def caption(rng, objects):
    """The words of a caption that mentions 2 or 3 of the objects, in random order."""
    k = min(len(objects), int(rng.integers(2, 4)))
    phrases = [describe(rng, objects[i]) for i in rng.permutation(len(objects))[:k]]
    words = []
    for i, phrase in enumerate(phrases):
        if i:
            words.append("and" if i == len(phrases) - 1 else ",")
        words.extend(phrase)
    return words


def tokenize(words):
    ids = [WORD_ID[w] for w in words]
    if len(ids) > MAX_TOKENS:
        raise ValueError(f"caption of {len(ids)} tokens is longer than MAX_TOKENS={MAX_TOKENS}")
    return ids + [0] * (MAX_TOKENS - len(ids))


def decode(tokens):
    """The caption text of a row of token ids."""
    return " ".join(VOCAB[int(t)] for t in tokens if t).replace(" ,", ",")


def generate(split):
    """The split's arrays, the same on every machine for a given numpy (the seed is fixed)."""
    rng = np.random.default_rng(SPLIT_SEED[split])
    n = SPLIT_SIZE[split]
    images = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    tokens = np.empty((n, MAX_TOKENS), np.uint8)
    boxes = np.full((n, MAX_OBJECTS, 4), -1, np.int16)
    for i in range(n):
        images[i], objects = draw_scene(rng)
        tokens[i] = tokenize(caption(rng, objects))
        boxes[i, :len(objects)] = [obj["box"] for obj in objects]
    return {"images": images, "tokens": tokens, "boxes": boxes}

# ---------------------------------------------------------------------------
# Data preparation (run once)


def _path(name):
    return os.path.join(DATA_DIR, f"{name}.npz")


def prepare(force=False):
    """Write data/{train,val,test,select}.npz; a split already there is left alone (unless force)."""
    missing = [name for name in SPLITS if force or not os.path.isfile(_path(name))]
    if not missing:
        print(f"{DATA_DIR}/ already prepared (pass --force to rewrite)")
        return
    os.makedirs(DATA_DIR, exist_ok=True)
    for name in missing:                          # each split from its own seed: one never moves another
        arrays = generate(name)
        tmp = _path(name) + ".tmp"
        with open(tmp, "wb") as f:                # write-then-rename: never a half-written file
            np.savez(f, **arrays)
        os.replace(tmp, _path(name))
        print(f"{_path(name)}: {len(arrays['images']):,} pairs, e.g. \"{decode(arrays['tokens'][0])}\"")

# ---------------------------------------------------------------------------
# Loading, expert heatmaps and the fixed evaluation (imported by train.py)


def load_split(name):
    """{"images": uint8 (N, 3, 32, 32), "tokens": uint8 (N, MAX_TOKENS), "boxes": int16 (N, MAX_OBJECTS, 4)}."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r} (one of {', '.join(SPLITS)})")
    path = _path(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python prepare.py` (or `nightlab prepare`) first")
    with np.load(path) as f:
        return {key: f[key] for key in f.files}


def expert_heatmaps(boxes):
    """float32 (N, 1, 32, 32): 1 inside any object's box, 0 elsewhere.

    The scene generator knows where it drew every object, the way eCLIP's radiologists' gaze knew
    where to look. Only the training loop may use them: the evaluation sees images and captions only.
    """
    coords = np.arange(IMAGE_SIZE)
    x0, y0, x1, y1 = (boxes[..., i][..., None] for i in range(4))            # (N, K, 1)
    inside_x = (coords >= x0) & (coords < x1)                                # (N, K, S); -1 rows are empty
    inside_y = (coords >= y0) & (coords < y1)
    heat = (inside_y[:, :, :, None] & inside_x[:, :, None, :]).any(axis=1)   # (N, S, S)
    return heat[:, None].astype(np.float32)


def _ranks(sim):
    """For each row, the 1-based rank of its diagonal entry; a tie counts half (float64)."""
    true = np.diag(sim)[:, None]
    ties = (sim == true).sum(axis=1) - 1
    return 1.0 + (sim > true).sum(axis=1) + 0.5 * ties


def evaluate_retrieval(encode_images, encode_texts, split="val"):
    """Score a dual encoder on every pair of a split, each query against all N candidates.

    `encode_images(x)` takes a float32 tensor (B, 3, 32, 32) with values in [0, 1] and returns
    (B, D) embeddings; `encode_texts(t)` takes an int64 tensor (B, MAX_TOKENS) of word ids, 0 =
    padding, and returns (B, D). Both are L2-normalised here and compared by cosine similarity.
    Returns {"<split>_mean_rank", "<split>_r1", "_r5", "_r10" (fractions), "_median_rank",
    "_i2t_mean_rank", "_t2i_mean_rank", "per_example": {"<split>_mean_rank": N per-scene ranks}}; the
    mean rank averages image->text and text->image, and is the mean of its per-example values: each
    scene's mean of its two ranks, in the split's order (the two are nearly the same number, so
    counting them as two examples would overstate how many independent examples there are).
    """
    import torch

    data = load_split(split)
    embeddings = []
    with torch.no_grad():
        for encode, key in ((encode_images, "images"), (encode_texts, "tokens")):
            parts = []
            for i in range(0, len(data[key]), EVAL_BATCH):
                chunk = torch.from_numpy(data[key][i:i + EVAL_BATCH].astype(np.int64))
                out = encode(chunk.float() / 255.0 if key == "images" else chunk)
                if out.dim() != 2 or out.shape[0] != chunk.shape[0]:
                    raise ValueError(f"encoder for {key} returned shape {tuple(out.shape)}, expected ({chunk.shape[0]}, D)")
                parts.append(out.double().numpy())
            emb = np.concatenate(parts)
            if not np.isfinite(emb).all():
                raise ValueError(f"encoder for {key} returned NaN or inf")
            embeddings.append(emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12))
    img, txt = embeddings
    if img.shape != txt.shape:
        raise ValueError(f"image embeddings {img.shape} and text embeddings {txt.shape} differ")
    sim = img @ txt.T
    i2t, t2i = _ranks(sim), _ranks(sim.T)
    both = np.concatenate([i2t, t2i])
    out = {"mean_rank": both.mean(), "r1": (both <= 1).mean(), "r5": (both <= 5).mean(),
           "r10": (both <= 10).mean(), "median_rank": float(np.median(both)),
           "i2t_mean_rank": i2t.mean(), "t2i_mean_rank": t2i.mean()}
    per_scene = (i2t + t2i) / 2
    return {f"{split}_{k}": float(v) for k, v in out.items()} | {"per_example": {f"{split}_mean_rank": per_scene}}


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
