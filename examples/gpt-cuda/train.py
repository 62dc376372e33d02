"""
gpt-cuda: a byte-level GPT on one NVIDIA GPU (bf16 autocast, torch.compile, PyTorch SDPA
attention), Karpathy's autoresearch setup with the tinylm model family. This is the one file
the agent edits: the knobs, the model, the optimizer and the training loop are all in here.
The data and the evaluation (val_bpb) are fixed in prepare.py.

    python prepare.py && python train.py

Environment (set by nightlab; the defaults are for running it by hand):
    NIGHTLAB_SEED      int, seeds everything (default 0)
    NIGHTLAB_BUDGET_S  float, the time budget in wall-clock seconds, start-up and compilation
                       included (default 300). When it is spent, training stops and the model
                       is evaluated as it is.
    NIGHTLAB_RUN_DIR   where a run may write files: metrics.json (val_bpb and each window's bpb)
    NIGHTLAB_SPLIT     the split to evaluate on (default val); `nightlab verify --test` sets "test"
    NIGHTLAB_FINAL     "1": train on train+val (`nightlab verify --final`, before the test evaluation)
    GPT_CUDA_SMOKE     "1": no GPU needed: a tiny model on the CPU in float32, without
                       torch.compile (for tests of the code path; its val_bpb means nothing)

Without a CUDA GPU (and without GPT_CUDA_SMOKE=1) it stops at once with one line and exit code 1.
The last lines on stdout are the summary block that nightlab reads (`name: value`).
"""

import time

t_process_start = time.perf_counter()  # the time budget counts from here

import contextlib
import math
import os
import resource
import sys

sys.dont_write_bytecode = True  # write nothing into the working tree, not even __pycache__/

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import SEQ_LEN, VOCAB_SIZE, evaluate_bpb, load_split, write_metrics

# ---------------------------------------------------------------------------
# Hyperparameters (edit these)

N_LAYER = 8                   # transformer blocks
N_EMBD = 512                  # model width (a multiple of head_dim below)
MLP_RATIO = 4                 # hidden width of the MLP, in multiples of N_EMBD
TOTAL_BATCH_TOKENS = 262144   # bytes per optimizer step (2**18), over DEVICE_BATCH_SIZE x SEQ_LEN micro-batches
LEARNING_RATE = 1e-3          # peak learning rate (AdamW)
WARMDOWN_RATIO = 0.4          # final fraction of training over which the LR decays linearly to 0
WEIGHT_DECAY = 0.1            # decoupled weight decay on the matrices (not the embedding)
DEVICE_BATCH_SIZE = 64        # sequences per forward pass: memory and speed only, not the maths

# Secondary settings: plain variables, so the optuna agent leaves them alone (edit them freely)
head_dim = 128                # channels per attention head
warmup_steps = 40             # linear warm-up of the learning rate from 0
beta2 = 0.95                  # AdamW's second-moment decay
grad_clip = 1.0               # clip the gradient norm to this (0 = no clipping)
init_std = 0.02               # std of the initial weights
rope_base = 10000.0           # rotary embedding base
compile_model = True          # torch.compile the training forward/backward (its compile time counts)

# ---------------------------------------------------------------------------
# Setup

smoke = os.environ.get("GPT_CUDA_SMOKE") == "1"
if not smoke and not torch.cuda.is_available():
    raise SystemExit(f"gpt-cuda needs an NVIDIA GPU: torch {torch.__version__} sees no CUDA device "
                     f"(built for CUDA {torch.version.cuda}; under nightlab, check [sandbox] gpus); "
                     "GPT_CUDA_SMOKE=1 runs a tiny CPU smoke test instead")
# The sizes in use: the knobs above, or a tiny model so that a CPU test runs the whole path in seconds.
# (Plain names: rebinding the UPPER_CASE knobs would hide them from the optuna agent.)
n_layer, n_embd, batch_tokens, device_batch = N_LAYER, N_EMBD, TOTAL_BATCH_TOKENS, DEVICE_BATCH_SIZE
if smoke:
    n_layer, n_embd, batch_tokens, device_batch = 2, 64, 2 * SEQ_LEN, 1
    head_dim, compile_model, warmup_steps = 32, False, 2
    torch.set_num_threads(1)  # a light load on a shared test machine

seed = int(os.environ.get("NIGHTLAB_SEED", "0"))
budget_s = float(os.environ.get("NIGHTLAB_BUDGET_S", "300"))
split = os.environ.get("NIGHTLAB_SPLIT", "val")  # what evaluate_bpb() scores at the end
device = torch.device("cpu" if smoke else "cuda")
torch.manual_seed(seed)
# bf16 on the GPU; float32 in the smoke test (bf16 autocast on a CPU is very slow in the backward)
autocast = contextlib.nullcontext() if smoke else torch.autocast("cuda", dtype=torch.bfloat16)

train_bytes = load_split("train")
if os.environ.get("NIGHTLAB_FINAL") == "1":  # the final retrain before a test evaluation: train+val
    train_bytes = np.concatenate([train_bytes, load_split("val")])
# The whole split sits on the device (a few MB for the shipped corpus), so batches cost no host work.
train_data = torch.from_numpy(train_bytes).to(device)
generator = torch.Generator(device=device).manual_seed(seed)

# ---------------------------------------------------------------------------
# Model: a GPT with RMSNorm, rotary position embeddings, causal SDPA attention and a ReLU^2 MLP


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(head_dim, length, base):
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, head_dim/2)
    return angles.cos()[None, None], angles.sin()[None, None]                  # (1, 1, T, head_dim/2)


def apply_rotary(x, cos, sin):
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # keep q and k in bf16 under autocast, as SDPA needs
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
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash attention on the GPU
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
        n_head = max(1, n_embd // head_dim)
        self.wte = nn.Embedding(VOCAB_SIZE, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, MLP_RATIO) for _ in range(n_layer))
        self.head = nn.Linear(n_embd, VOCAB_SIZE, bias=False)
        cos, sin = rotary_tables(n_embd // n_head, SEQ_LEN, rope_base)
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


raw_model = GPT().to(device)
num_params = sum(p.numel() for p in raw_model.parameters())
# Training FLOPs per token, as nanoGPT/nanochat estimate them: 6 per weight used in a matmul (forward
# and backward; the embedding is a lookup), plus attention's QK^T and AV over the full context.
flops_per_token = 6 * (num_params - raw_model.wte.weight.numel()) + 12 * n_layer * n_embd * SEQ_LEN
model = torch.compile(raw_model) if compile_model else raw_model

# ---------------------------------------------------------------------------
# Optimizer: AdamW (fused on the GPU); warm-up, then constant, then a linear warm-down by time used

decay = [p for p in raw_model.parameters() if p.dim() == 2 and p is not raw_model.wte.weight]
no_decay = [p for p in raw_model.parameters() if not (p.dim() == 2 and p is not raw_model.wte.weight)]
optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
    lr=LEARNING_RATE, betas=(0.9, beta2), eps=1e-8, fused=device.type == "cuda")
micro_batch = max(1, min(device_batch, batch_tokens // SEQ_LEN))
accum_steps = max(1, batch_tokens // (micro_batch * SEQ_LEN))
tokens_per_step = accum_steps * micro_batch * SEQ_LEN


def lr_at(step, progress):
    """The learning rate after `step` steps, `progress` (0..1) of the way through the budget."""
    warmup = min(1.0, (step + 1) / max(1, warmup_steps))
    warmdown = min(max(WARMDOWN_RATIO, 1e-9), 1.0)
    return LEARNING_RATE * warmup * min(1.0, max(0.0, 1.0 - progress) / warmdown)


def get_batch():
    starts = torch.randint(0, len(train_data) - SEQ_LEN - 1, (micro_batch,), device=device, generator=generator)
    chunk = train_data[starts[:, None] + torch.arange(SEQ_LEN + 1, device=device)[None, :]].long()
    return chunk[:, :-1], chunk[:, 1:]


def train_step(lr):
    """One optimizer step over accum_steps micro-batches; returns the mean loss (a float)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=device)
    for _ in range(accum_steps):
        x, y = get_batch()
        with autocast:
            loss = F.cross_entropy(model(x).reshape(-1, VOCAB_SIZE).float(), y.reshape(-1))
        (loss / accum_steps).backward()
        total += loss.detach()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total.item() / accum_steps  # .item() waits for the GPU, so step times are real

# ---------------------------------------------------------------------------
# Training loop

t_start = time.perf_counter()
deadline = t_process_start + budget_s  # start-up counts too, so a run never overshoots by much
step_seconds = 0.0                     # how long the last step took
first_step_s = 0.0                     # the first step, torch.compile's compilation included
step = 0
smooth_loss = None
raw_model.train()
while True:
    t_step = time.perf_counter()
    if step and t_step + step_seconds >= deadline:  # the next step would not finish in time (one always runs)
        break
    progress = (t_step - t_start) / max(1e-9, deadline - t_start)
    lr = lr_at(step, progress)
    loss_value = train_step(lr)
    if not math.isfinite(loss_value):
        print("FAIL")
        sys.exit(1)
    smooth_loss = loss_value if smooth_loss is None else 0.9 * smooth_loss + 0.1 * loss_value
    step += 1
    step_seconds = time.perf_counter() - t_step
    if step == 1:
        first_step_s = step_seconds
    if step % 100 == 0:
        print(f"step {step:5d} | loss {smooth_loss:.4f} ({smooth_loss / math.log(2):.3f} bits/byte) "
              f"| lr {lr:.2e} | {time.perf_counter() - t_start:.1f}s", flush=True)
training_seconds = time.perf_counter() - t_start
# Throughput after the first step, which carries the compilation; when only one step ran (a slow or busy machine),
# that step's own, compilation and all, rather than no figure
steady_seconds = training_seconds - first_step_s
if step > 1 and steady_seconds > 0:
    tokens_per_s = (step - 1) * tokens_per_step / steady_seconds
else:
    tokens_per_s = step * tokens_per_step / training_seconds

# ---------------------------------------------------------------------------
# Evaluation and summary

# Dense bf16 tensor-core peaks (no sparsity) from NVIDIA's datasheets, matched against the device's
# name; an unknown GPU (or the CPU smoke test) reports no MFU rather than a guess.
PEAK_BF16_TFLOPS = [(("H200", "NVL"), 835.0), (("H200",), 989.0), (("H100", "NVL"), 835.0),
                    (("H100", "PCIE"), 756.0), (("H100",), 989.0), (("A100",), 312.0)]


def peak_tflops(name):
    for parts, tflops in PEAK_BF16_TFLOPS:
        if all(part in name.upper() for part in parts):
            return tflops
    return None


raw_model.eval()
t_eval = time.perf_counter()
with autocast:  # the uncompiled model: the evaluation's batch shape would trigger a second compilation
    results = evaluate_bpb(raw_model, split)
eval_seconds = time.perf_counter() - t_eval
write_metrics(results)  # $NIGHTLAB_RUN_DIR/metrics.json: the same val_bpb, and each window's, weighted by its bytes
gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU smoke test)"
peak = peak_tflops(gpu_name) if device.type == "cuda" else None
if device.type == "cuda":
    peak_memory_gb = torch.cuda.max_memory_allocated(device) / 1024**3
else:
    peak_memory_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
print("---")
print(f"{split + '_bpb:':<18}{results[split + '_bpb']:.6f}")
print(f"training_seconds: {training_seconds:.1f}")
print(f"total_seconds:    {time.perf_counter() - t_process_start:.1f}")
print(f"peak_memory_gb:   {peak_memory_gb:.3f}")
print(f"total_tokens_M:   {step * tokens_per_step / 1e6:.2f}")
print(f"num_steps:        {step}")
print(f"tokens_per_s:     {tokens_per_s:.0f}")
if peak is not None:
    print(f"mfu_percent:      {100 * tokens_per_s * flops_per_token / (peak * 1e12):.2f}")
print(f"first_step_s:     {first_step_s:.1f}")
print(f"eval_seconds:     {eval_seconds:.1f}")
print(f"num_params_M:     {num_params / 1e6:.3f}")
print(f"depth:            {n_layer}")
print(f"gpu:              {gpu_name}")
