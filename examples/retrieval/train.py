"""
retrieval: an eCLIP-style image-text dual encoder on procedural scenes, on a CPU. This is the one
file the agent edits: the knobs, the two towers, the loss, the optimizer and the training loop are
all in here. The data and the evaluation (mean rank) are fixed in prepare.py.

    python prepare.py && python train.py

Environment (set by nightlab; the defaults are for running it by hand):
    NIGHTLAB_SEED      int, seeds everything (default 0)
    NIGHTLAB_BUDGET_S  float, the time budget in wall-clock seconds, start-up included (default 60).
                       When it is spent, training stops and the model is evaluated as it is
                       (the fixed evaluation takes about a second more).
    NIGHTLAB_RUN_DIR   where a run may write files: metrics.json (the metric and its per-example ranks)
    NIGHTLAB_SPLIT     the split to evaluate on (default val); `nightlab verify --test` sets "test",
                       `nightlab verify --select` sets "select" (the selection split, hidden from trials)
    NIGHTLAB_FINAL     "1": train on train+val (`nightlab verify --final`, before the test evaluation)
    NIGHTLAB_THREADS   torch threads (default: half the cores, at least 1, at most 4)

The last lines on stdout are the summary block that nightlab reads (`name: value`).
"""

import time

t_process_start = time.perf_counter()  # the time budget counts from here

import math
import os
import resource
import sys

sys.dont_write_bytecode = True  # write nothing into the working tree, not even __pycache__/
# On a shared CPU, OpenMP threads that spin while waiting slow everyone down (by 2-3x here);
# passive waiting costs about 10% when the machine is idle and saves much more when it is not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import MAX_TOKENS, VOCAB_SIZE, evaluate_retrieval, expert_heatmaps, load_split, write_metrics

# ---------------------------------------------------------------------------
# Hyperparameters (edit these)

CNN_WIDTH = 32            # channels of the first conv stage (doubled after each downsampling)
TEXT_WIDTH = 128          # width of the text transformer
TEXT_LAYERS = 2           # text transformer blocks
EMBED_DIM = 128           # size of the shared embedding space (the projection heads' output)
BATCH_SIZE = 64           # image-caption pairs per step (each pair's negatives are the rest of the batch)
LEARNING_RATE = 3e-4      # peak learning rate (AdamW)
WARMDOWN_RATIO = 0.3      # final fraction of training over which the LR decays linearly to 0
WEIGHT_DECAY = 0.1        # decoupled weight decay on the matrices and conv kernels
LOGIT_SCALE_MAX = 4.6052  # clamp on the inverse temperature (CLIP's: ln 100)
HEATMAP_WEIGHT = 0.0      # weight of the auxiliary loss on the expert heatmaps (0 = off)

# Secondary settings: plain variables, so the optuna agent leaves them alone (edit them freely)
warmup_steps = 20         # linear warm-up of the learning rate from 0
beta2 = 0.98              # AdamW's second-moment decay
grad_clip = 1.0           # clip the gradient norm to this (0 = no clipping)
text_heads = 4            # attention heads of the text transformer
logit_scale_init = 1 / 0.07  # initial inverse temperature of the contrastive loss (CLIP's)

# ---------------------------------------------------------------------------
# Setup

seed = int(os.environ.get("NIGHTLAB_SEED", "0"))
budget_s = float(os.environ.get("NIGHTLAB_BUDGET_S", "60"))
split = os.environ.get("NIGHTLAB_SPLIT", "val")  # what evaluate_retrieval() scores at the end: val, select or test
# Half the cores (at most 4): on a 2-core machine one thread, which keeps a whole core even when
# something else runs, so wall-clock-budgeted results stay comparable (see README.md).
threads = int(os.environ.get("NIGHTLAB_THREADS", "0")) or max(1, min(4, (os.cpu_count() or 2) // 2))
torch.set_num_threads(threads)
torch.manual_seed(seed)
rng = np.random.default_rng(seed)

parts = [load_split("train")]
if os.environ.get("NIGHTLAB_FINAL") == "1":  # the final retrain before a test evaluation: train+val
    parts.append(load_split("val"))
train_images = torch.from_numpy(np.concatenate([p["images"] for p in parts]))                 # uint8 (N, 3, 32, 32)
train_tokens = torch.from_numpy(np.concatenate([p["tokens"] for p in parts]).astype(np.int64))  # (N, MAX_TOKENS)
train_heat = torch.from_numpy(expert_heatmaps(np.concatenate([p["boxes"] for p in parts])))   # (N, 1, 32, 32)
n_train = len(train_images)

# ---------------------------------------------------------------------------
# Model: a CNN image tower and a transformer text tower, each with a projection head


def conv_block(c_in, c_out, stride):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ImageTower(nn.Module):
    """32x32 -> 8x8 feature map; flattened (not pooled), so the embedding keeps where things are."""

    def __init__(self):
        super().__init__()
        w = CNN_WIDTH
        self.features = nn.Sequential(conv_block(3, w, 1), conv_block(w, w, 1), conv_block(w, 2 * w, 2),
                                      conv_block(2 * w, 2 * w, 1), conv_block(2 * w, 4 * w, 2))
        self.heat_head = nn.Conv2d(4 * w, 1, 1)          # predicts the expert heatmap (HEATMAP_WEIGHT)
        self.proj = nn.Linear(4 * w * 8 * 8, EMBED_DIM)  # the projection head

    def forward(self, x):
        fmap = self.features(x - 0.5)
        return self.proj(fmap.flatten(1)), fmap


class TextTower(nn.Module):
    """Word embeddings + learned positions -> pre-norm transformer -> masked mean -> projection."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB_SIZE, TEXT_WIDTH, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(MAX_TOKENS, TEXT_WIDTH) * 0.02)
        layer = nn.TransformerEncoderLayer(TEXT_WIDTH, text_heads, 4 * TEXT_WIDTH, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, TEXT_LAYERS, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(TEXT_WIDTH)
        self.proj = nn.Linear(TEXT_WIDTH, EMBED_DIM)     # the projection head

    def forward(self, tokens):
        pad = tokens == 0
        h = self.blocks(self.tok(tokens) + self.pos, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return self.proj(self.norm((h * keep).sum(1) / keep.sum(1).clamp(min=1.0)))


class DualEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = ImageTower()
        self.text = TextTower()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))  # learnable, as in CLIP

    def scale(self):
        return self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)

    def encode_images(self, x):
        return F.normalize(self.image(x)[0], dim=-1)

    def encode_texts(self, tokens):
        return F.normalize(self.text(tokens), dim=-1)


def contrastive_loss(model, images, tokens, heat):
    """Symmetric InfoNCE over the batch (CLIP's loss), plus the optional expert-heatmap loss."""
    img_emb, fmap = model.image(images)
    img_emb, txt_emb = F.normalize(img_emb, dim=-1), model.encode_texts(tokens)
    logits = model.scale() * img_emb @ txt_emb.T
    target = torch.arange(len(images))
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    if HEATMAP_WEIGHT > 0:  # where the objects are, from the generator's boxes, at the 8x8 resolution
        heat_logits = model.image.heat_head(fmap)
        loss = loss + HEATMAP_WEIGHT * F.binary_cross_entropy_with_logits(heat_logits, F.avg_pool2d(heat, 4))
    return loss


model = DualEncoder()
num_params = sum(p.numel() for p in model.parameters())

# ---------------------------------------------------------------------------
# Optimizer: AdamW; warm-up, then constant, then a linear warm-down driven by the time used

decay = [p for p in model.parameters() if p.dim() >= 2 and p is not model.text.tok.weight]
no_decay = [p for p in model.parameters() if not (p.dim() >= 2 and p is not model.text.tok.weight)]
optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
    lr=LEARNING_RATE, betas=(0.9, beta2), eps=1e-8, foreach=True)


def lr_at(step, progress):
    """The learning rate after `step` steps, `progress` (0..1) of the way through the budget."""
    warmup = min(1.0, (step + 1) / max(1, warmup_steps))
    warmdown = min(max(WARMDOWN_RATIO, 1e-9), 1.0)
    return LEARNING_RATE * warmup * min(1.0, max(0.0, 1.0 - progress) / warmdown)


def batches():
    """Shuffled minibatches of indices, epoch after epoch (a partial last batch is dropped)."""
    while True:
        perm = rng.permutation(n_train)
        for i in range(0, n_train - BATCH_SIZE + 1, BATCH_SIZE):
            yield torch.from_numpy(perm[i:i + BATCH_SIZE])

# ---------------------------------------------------------------------------
# Training loop

t_start = time.perf_counter()
deadline = t_process_start + budget_s  # start-up counts too, so a run never overshoots by much
cpu_start = time.process_time()
step_seconds = 0.0                     # how long the last step took
step = 0
smooth_loss = None
model.train()
for idx in batches():
    t_step = time.perf_counter()
    if step and t_step + step_seconds >= deadline:  # the next step would not finish in time (one always runs)
        break
    progress = (t_step - t_start) / max(1e-9, deadline - t_start)
    lr = lr_at(step, progress)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = contrastive_loss(model, train_images[idx].float() / 255.0, train_tokens[idx], train_heat[idx])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        print("FAIL")
        sys.exit(1)
    smooth_loss = loss_value if smooth_loss is None else 0.9 * smooth_loss + 0.1 * loss_value
    step += 1
    step_seconds = time.perf_counter() - t_step
    if step % 50 == 0:
        print(f"step {step:5d} | loss {smooth_loss:.4f} | logit scale {model.scale().item():.2f} "
              f"| lr {lr:.2e} | {time.perf_counter() - t_start:.1f}s", flush=True)
training_seconds = time.perf_counter() - t_start
cpu_util = (time.process_time() - cpu_start) / max(1e-9, training_seconds)

# ---------------------------------------------------------------------------
# Evaluation and summary

model.eval()
t_eval = time.perf_counter()
results = evaluate_retrieval(model.encode_images, model.encode_texts, split)
eval_seconds = time.perf_counter() - t_eval
write_metrics(results)  # $NIGHTLAB_RUN_DIR/metrics.json: the same mean rank, and each scene's mean rank
peak_memory_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux
print("---")
for key, fmt in (("mean_rank", ".7g"), ("r1", ".4f"), ("r5", ".4f"), ("r10", ".4f"), ("median_rank", ".1f")):
    print(f"{split + '_' + key + ':':<18}{results[split + '_' + key]:{fmt}}")
print(f"training_seconds: {training_seconds:.1f}")
print(f"eval_seconds:     {eval_seconds:.1f}")
print(f"total_seconds:    {time.perf_counter() - t_process_start:.1f}")
print(f"peak_memory_gb:   {peak_memory_gb:.3f}")
print(f"num_steps:        {step}")
print(f"steps_per_s:      {step / max(1e-9, training_seconds):.2f}")
print(f"epochs:           {step * BATCH_SIZE / n_train:.2f}")
print(f"cpu_util:         {cpu_util:.2f}")
print(f"num_params_M:     {num_params / 1e6:.3f}")
print(f"logit_scale:      {model.scale().item():.2f}")
