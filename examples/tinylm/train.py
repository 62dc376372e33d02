"""
tinylm: a small byte-level GPT on public-domain English, on a CPU. This is the one file the
agent edits: the knobs, the model, the optimizer and the training loop are all in here. The
data and the evaluation (val_bpb) are fixed in prepare.py.

    python prepare.py && python train.py

Environment (set by nightlab; the defaults are for running it by hand):
    NIGHTLAB_SEED      int, seeds everything (default 0)
    NIGHTLAB_BUDGET_S  float, the time budget in wall-clock seconds, start-up included (default 60).
                       When it is spent, training stops and the model is evaluated as it is
                       (the fixed evaluation takes a few more seconds).
    NIGHTLAB_RUN_DIR   where a run may write files: metrics.json (val_bpb and each window's bpb)
    NIGHTLAB_SPLIT     the split to evaluate on (default val); `nightlab verify --test` sets "test"
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

from prepare import SEQ_LEN, VOCAB_SIZE, evaluate_bpb, load_split, write_metrics

# ---------------------------------------------------------------------------
# Hyperparameters (edit these)

N_LAYER = 6               # transformer blocks
N_EMBD = 128              # model width (a multiple of head_dim below)
MLP_RATIO = 4             # hidden width of the MLP, in multiples of N_EMBD
BATCH_SIZE = 16           # sequences of SEQ_LEN bytes per optimizer step
LEARNING_RATE = 6e-4      # peak learning rate (AdamW; GPT-2's)
WARMDOWN_RATIO = 0.3      # final fraction of training over which the LR decays linearly to 0
WEIGHT_DECAY = 0.1        # decoupled weight decay on the matrices (not norms, not embeddings)

# Secondary settings: plain variables, so the optuna agent leaves them alone (edit them freely)
head_dim = 32             # channels per attention head
warmup_steps = 20         # linear warm-up of the learning rate from 0
beta2 = 0.95              # AdamW's second-moment decay
grad_clip = 1.0           # clip the gradient norm to this (0 = no clipping)
init_std = 0.02           # std of the initial weights
rope_base = 10000.0       # rotary embedding base

# ---------------------------------------------------------------------------
# Setup

seed = int(os.environ.get("NIGHTLAB_SEED", "0"))
budget_s = float(os.environ.get("NIGHTLAB_BUDGET_S", "60"))
split = os.environ.get("NIGHTLAB_SPLIT", "val")  # what evaluate_bpb() scores at the end
# Half the cores (at most 4): on a 2-core machine one thread, which keeps a whole core even when
# something else runs, so wall-clock-budgeted results stay comparable (see README.md).
threads = int(os.environ.get("NIGHTLAB_THREADS", "0")) or max(1, min(4, (os.cpu_count() or 2) // 2))
torch.set_num_threads(threads)
torch.manual_seed(seed)
rng = np.random.default_rng(seed)

train_data = load_split("train")  # uint8 bytes
if os.environ.get("NIGHTLAB_FINAL") == "1":  # the final retrain before a test evaluation: train+val
    train_data = np.concatenate([train_data, load_split("val")])

# ---------------------------------------------------------------------------
# Model: a GPT with RMSNorm, rotary position embeddings, causal attention and a ReLU^2 MLP


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(head_dim, length, base):
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, head_dim/2)
    return angles.cos()[None, None], angles.sin()[None, None]                  # (1, 1, T, head_dim/2)


def apply_rotary(x, cos, sin):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd, ratio):
        super().__init__()
        self.up = nn.Linear(n_embd, ratio * n_embd, bias=False)
        self.down = nn.Linear(ratio * n_embd, n_embd, bias=False)

    def forward(self, x):
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    def __init__(self, n_embd, n_head, ratio):
        super().__init__()
        self.attn = Attention(n_embd, n_head)
        self.mlp = MLP(n_embd, ratio)

    def forward(self, x, cos, sin):
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        n_head = max(1, N_EMBD // head_dim)
        self.wte = nn.Embedding(VOCAB_SIZE, N_EMBD)
        self.blocks = nn.ModuleList(Block(N_EMBD, n_head, MLP_RATIO) for _ in range(N_LAYER))
        self.head = nn.Linear(N_EMBD, VOCAB_SIZE, bias=False)
        cos, sin = rotary_tables(N_EMBD // n_head, SEQ_LEN, rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for p in self.parameters():
            torch.nn.init.normal_(p, std=init_std)

    def forward(self, idx):
        T = idx.size(1)
        cos, sin = self.cos[:, :, :T], self.sin[:, :, :T]
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(rms_norm(x))


model = GPT()
num_params = sum(p.numel() for p in model.parameters())

# ---------------------------------------------------------------------------
# Optimizer: AdamW; warm-up, then constant, then a linear warm-down driven by the time used

decay = [p for p in model.parameters() if p.dim() == 2 and p is not model.wte.weight]
no_decay = [p for p in model.parameters() if not (p.dim() == 2 and p is not model.wte.weight)]
optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
    lr=LEARNING_RATE, betas=(0.9, beta2), eps=1e-8, foreach=True)


def lr_at(step, progress):
    """The learning rate after `step` steps, `progress` (0..1) of the way through the budget."""
    warmup = min(1.0, (step + 1) / max(1, warmup_steps))
    warmdown = min(max(WARMDOWN_RATIO, 1e-9), 1.0)
    return LEARNING_RATE * warmup * min(1.0, max(0.0, 1.0 - progress) / warmdown)


def get_batch():
    starts = rng.integers(0, len(train_data) - SEQ_LEN - 1, size=BATCH_SIZE)
    chunk = torch.from_numpy(train_data[starts[:, None] + np.arange(SEQ_LEN + 1)[None, :]].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]

# ---------------------------------------------------------------------------
# Training loop

t_start = time.perf_counter()
deadline = t_process_start + budget_s  # start-up counts too, so a run never overshoots by much
cpu_start = time.process_time()
step_seconds = 0.0                     # how long the last step took
step = 0
smooth_loss = None
model.train()
while True:
    t_step = time.perf_counter()
    if step and t_step + step_seconds >= deadline:  # the next step would not finish in time (one always runs)
        break
    progress = (t_step - t_start) / max(1e-9, deadline - t_start)
    lr = lr_at(step, progress)
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = get_batch()
    loss = F.cross_entropy(model(x).reshape(-1, VOCAB_SIZE), y.reshape(-1))
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
        print(f"step {step:5d} | loss {smooth_loss:.4f} ({smooth_loss / math.log(2):.3f} bits/byte) "
              f"| lr {lr:.2e} | {time.perf_counter() - t_start:.1f}s", flush=True)
training_seconds = time.perf_counter() - t_start
cpu_util = (time.process_time() - cpu_start) / max(1e-9, training_seconds)

# ---------------------------------------------------------------------------
# Evaluation and summary

model.eval()
results = evaluate_bpb(model, split)
write_metrics(results)  # $NIGHTLAB_RUN_DIR/metrics.json: the same val_bpb, and each window's, weighted by its bytes
peak_memory_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux
print("---")
print(f"{split + '_bpb:':<18}{results[split + '_bpb']:.6f}")
print(f"training_seconds: {training_seconds:.1f}")
print(f"total_seconds:    {time.perf_counter() - t_process_start:.1f}")
print(f"peak_memory_gb:   {peak_memory_gb:.3f}")
print(f"total_tokens_M:   {step * BATCH_SIZE * SEQ_LEN / 1e6:.2f}")
print(f"num_steps:        {step}")
print(f"steps_per_s:      {step / max(1e-9, training_seconds):.2f}")
print(f"cpu_util:         {cpu_util:.2f}")
print(f"num_params_M:     {num_params / 1e6:.3f}")
print(f"depth:            {N_LAYER}")
