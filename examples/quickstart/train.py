"""
Quickstart: a small numpy MLP that classifies 8x8 handwritten digits.

This is the ONE file the agent edits: the knobs, the model, the optimizer and the
training loop are all in here. The data and the evaluation are fixed in prepare.py.

    python prepare.py && python train.py

Environment (set by nightlab; the defaults are for running it by hand):
    NIGHTLAB_SEED      int, seeds everything (default 0)
    NIGHTLAB_BUDGET_S  float, the time budget in wall-clock seconds, start-up included (default 8).
                       When it is spent, training stops and the model is evaluated as it is.
    NIGHTLAB_RUN_DIR   where a run may write files: metrics.json (the metric and its per-example values)
    NIGHTLAB_SPLIT     the split to evaluate on (default val); `nightlab verify --test` sets "test",
                       `nightlab verify --select` sets "select" (the selection split, hidden from trials)
    NIGHTLAB_FINAL     "1": train on train+val (`nightlab verify --final`, before the test evaluation)

The last lines on stdout are the summary block that nightlab reads (`name: value`).
"""

import time

t_process_start = time.perf_counter()  # the time budget counts from here

import math
import os
import resource
import sys

sys.dont_write_bytecode = True  # write nothing into the working tree, not even __pycache__/
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # the matrices are small: one BLAS thread is faster, and steadier

import numpy as np

from prepare import NUM_CLASSES, evaluate, load_split, write_metrics

# ---------------------------------------------------------------------------
# Hyperparameters (edit these)

HIDDEN_SIZE = 512         # width of each hidden layer (power of two)
DEPTH = 2                 # number of hidden layers
BATCH_SIZE = 16           # examples per optimizer step (power of two)
EPOCHS = 40               # passes over the training set (the time budget may stop it sooner)
LEARNING_RATE = 0.001     # peak learning rate
WARMDOWN_RATIO = 0.5      # final fraction of training over which the LR decays linearly to 0
WEIGHT_DECAY = 5e-4       # decoupled weight decay on the weight matrices (not the biases)
INIT_SCALE = 1.0          # multiplier on the initial weights of the output layer
LABEL_SMOOTHING = 0.01    # probability mass spread uniformly over the classes in the targets
USE_ADAM = False          # Adam (True) or SGD with Nesterov momentum (False)

# ---------------------------------------------------------------------------
# Setup

seed = int(os.environ.get("NIGHTLAB_SEED", "0"))
budget_s = float(os.environ.get("NIGHTLAB_BUDGET_S", "8"))
rng = np.random.default_rng(seed)

split = os.environ.get("NIGHTLAB_SPLIT", "val")  # what evaluate() scores at the end: val, select or test

X_train, y_train = load_split("train")  # (717, 64) float32 in [0, 1], (717,) int64
if os.environ.get("NIGHTLAB_FINAL") == "1":  # the final retrain before a test evaluation: train+val
    X_val, y_val = load_split("val")
    X_train, y_train = np.concatenate([X_train, X_val]), np.concatenate([y_train, y_val])
n_train, n_features = X_train.shape
Y_train = np.full((n_train, NUM_CLASSES), LABEL_SMOOTHING / NUM_CLASSES, dtype=np.float32)
Y_train[np.arange(n_train), y_train] += 1.0 - LABEL_SMOOTHING  # smoothed one-hot targets

# ---------------------------------------------------------------------------
# Model: DEPTH x (linear -> ReLU), then linear -> softmax

sizes = [n_features] + [HIDDEN_SIZE] * DEPTH + [NUM_CLASSES]
weights, biases = [], []
for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    std = math.sqrt(2.0 / fan_in)  # He initialisation, for ReLU
    if i == len(sizes) - 2:
        std *= INIT_SCALE
    weights.append((std * rng.standard_normal((fan_in, fan_out))).astype(np.float32))
    biases.append(np.zeros(fan_out, dtype=np.float32))
params = weights + biases


def forward(X):
    """Return the logits, and the input of every layer (for the backward pass)."""
    inputs = []
    h = X
    for W, b in zip(weights[:-1], biases[:-1]):
        inputs.append(h)
        h = np.maximum(h @ W + b, 0.0)
    inputs.append(h)
    return h @ weights[-1] + biases[-1], inputs


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def loss_and_grads(X, Y):
    """Mean cross-entropy against the targets Y, and its gradient for every tensor in params."""
    logits, inputs = forward(X)
    p = softmax(logits)
    loss = float(-(Y * np.log(np.maximum(p, 1e-12))).sum(axis=1).mean())
    d = (p - Y) / len(X)  # d loss / d logits
    grad_w, grad_b = [None] * len(weights), [None] * len(biases)
    for i in reversed(range(len(weights))):
        grad_w[i] = inputs[i].T @ d
        grad_b[i] = d.sum(axis=0)
        if i > 0:
            d = (d @ weights[i].T) * (inputs[i] > 0)  # back through the ReLU
    return loss, grad_w + grad_b


def predict_proba(X):
    return softmax(forward(X)[0])

# ---------------------------------------------------------------------------
# Optimizer: Adam or SGD with Nesterov momentum; decoupled weight decay; LR warmdown

beta1, beta2, eps = 0.9, 0.999, 1e-8  # Adam
momentum = 0.9                        # SGD
buf1 = [np.zeros_like(p) for p in params]  # Adam's first moment, or SGD's velocity
buf2 = [np.zeros_like(p) for p in params]  # Adam's second moment


def lr_at(progress):
    """The learning rate at `progress` (0 at the start of training, 1 at the end): constant,
    then a linear decay to 0 over the last WARMDOWN_RATIO of training."""
    warmdown = min(max(WARMDOWN_RATIO, 1e-9), 1.0)  # a fraction of training, in (0, 1]
    return LEARNING_RATE * min(1.0, max(0.0, 1.0 - progress) / warmdown)


def update(grads, lr, t):
    """One optimizer step (t counts from 1), in place."""
    for p, g, m, v in zip(params, grads, buf1, buf2):
        if p.ndim == 2:
            p *= 1.0 - lr * WEIGHT_DECAY
        if USE_ADAM:
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)  # with bias correction
            p -= step_size * m / (np.sqrt(v) + eps)
        else:
            m *= momentum
            m += g
            p -= lr * (g + momentum * m)

# ---------------------------------------------------------------------------
# Training loop

steps_per_epoch = math.ceil(n_train / BATCH_SIZE)
total_steps = EPOCHS * steps_per_epoch
t_start = time.perf_counter()
deadline = t_process_start + budget_s  # start-up counts too, so a run never overshoots by much
step_seconds = 0.0                     # how long the last step took
step = 0
out_of_time = False
for epoch in range(EPOCHS):
    perm = rng.permutation(n_train)
    epoch_loss = 0.0
    for k in range(steps_per_epoch):
        t_step = time.perf_counter()
        if step and t_step + step_seconds >= deadline:  # the next step would not finish in time (one always runs)
            out_of_time = True
            break
        idx = perm[k * BATCH_SIZE:(k + 1) * BATCH_SIZE]
        loss, grads = loss_and_grads(X_train[idx], Y_train[idx])
        if not math.isfinite(loss):
            print("FAIL")
            sys.exit(1)
        # Progress is the larger of the steps done and the time used, so that the LR still
        # decays to 0 in a run that the budget cuts short.
        progress = max(step / total_steps, (t_step - t_start) / (deadline - t_start))
        step += 1
        update(grads, lr_at(progress), step)
        epoch_loss += loss
        step_seconds = time.perf_counter() - t_step
    if out_of_time:
        print(f"time budget of {budget_s:g}s spent during epoch {epoch + 1}: stopping")
        break
    print(f"epoch {epoch + 1:3d}/{EPOCHS} | train_loss {epoch_loss / steps_per_epoch:.4f} "
          f"| lr {lr_at(progress):.2e} | {time.perf_counter() - t_start:.1f}s", flush=True)
training_seconds = time.perf_counter() - t_start

# ---------------------------------------------------------------------------
# Evaluation and summary

if not all(np.isfinite(p).all() for p in params):
    print("FAIL")
    sys.exit(1)
results = evaluate(predict_proba, split)
write_metrics(results)  # $NIGHTLAB_RUN_DIR/metrics.json: the same loss, and the loss of every image
peak_memory_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux
print("---")
print(f"{split + '_loss:':<18}{results[split + '_loss']:.6g}")
print(f"{split + '_accuracy:':<18}{results[split + '_accuracy']:.4f}")
print(f"training_seconds: {training_seconds:.1f}")
print(f"peak_memory_gb:   {peak_memory_gb:.3f}")
print(f"epochs:           {step / steps_per_epoch:.1f}")
print(f"steps:            {step}")
