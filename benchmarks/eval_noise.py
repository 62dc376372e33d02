"""Evaluation noise: how the keep rule treats a deterministic train.py scored on a small validation split.

The learner is scikit-learn's random forest on the digits data bundled with scikit-learn (1797 images,
nothing downloaded), its seed hard-coded as in most train.py files: every run of the same code gives the
same number, so nightlab's baseline runs twice, sees identical results (seed noise 0) and each candidate
runs once. What moves the metric is which examples are in the validation split, and, when the code changes,
which model the hard-coded seed happens to give. The forest is trained on a fixed training set; the other
examples form a pool, and each session draws its validation split (VAL examples) from the pool, the rest of
the pool being that session's held-out test split.

Every (configuration, seed) is fitted once and its per-example values on the pool are kept; sessions are
then replayed in memory with the real decide() and per_example.paired_se, as the loop calls them for a
deterministic train.py:
    nightlab default:  decide(metric, [value], best, 0.0, KeepConfig(), 1, paired_se(candidate, best))
    plain gate:        decide(metric, [value], best, 0.0, KeepConfig(), 1)   (keep iff strictly better)
    nightlab, seeded:  the same learner, but train.py reads its seed from NIGHTLAB_SEED: the baseline's 5 noise
                       runs measure the seed noise, a seed "change" in the code is a no-op, and every run of a
                       candidate gets a fresh seed (confirmation runs as the loop makes them)
All rules see the identical stream of proposals. Proposals are of two kinds:
- no effect: only the hard-coded seed changes (the current best's configuration, another seed);
- real: another configuration (more training data, more trees, ...) with the current best's seed, whose
  true effect is its mean over all seeds and the whole pool, in units of the validation standard error
  SE = sd(per-example values) / sqrt(VAL) of the baseline configuration.
Three measurements, for each metric (0/1 error and log-loss, both minimized):
1. no-effect kept: sessions of TRIALS seed-only changes after the baseline, every trial counted and the
   first trial alone (Wilson 95% intervals);
2. real kept: the first trial after the baseline is one real change, for each configuration that helps;
   the rate at 2 SE is interpolated between the configurations around it (each is printed);
3. the val - test gap of the state a chain ends at, after the no-effect stream of 1. and after a mixed
   stream (each trial a seed-only change or a move to another configuration, better or worse, half and
   half): mean over sessions, negative = the validation score flatters it. The baseline's own val - test
   (zero on average: its split is random) is subtracted session by session, which only removes noise.
   Also the mixed stream's test gain of the final state over the baseline.
The targets are for nightlab's default on the deterministic train.py; the seeded row shows what reading
NIGHTLAB_SEED adds. The "seed lottery" line says why a seed-only change can pass a paired test: two seeds give two models
whose difference is real on the whole population, not only on the validation split, and a hard-coded seed
hides it from the noise runs (they all use the same seed).

Metric: log-loss is the one to report per example (continuous, no ties, and the per-example differences
of two related models are small, so pairing removes most of the evaluation noise); 0/1 error is shown
beside it because it is the usual headline number, and pairing helps it little here.

Targets (issue 12, item 8): no-effect changes kept <= 5%; a real change worth 2 validation standard
errors kept >= 80%; |val - test gap| of nightlab's final best <= 30% of the plain gate's.

    python benchmarks/eval_noise.py [SESSIONS=2000] [TRIALS=10] [SEEDS=24] [VAL=300]

About a minute on two cores with the defaults, most of it fitting the forests (needs numpy and
scikit-learn: the dev extras).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from array import array
from dataclasses import dataclass, field

import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier

from nightlab.config import KeepConfig
from nightlab.decide import Verdict, decide, distinct, noise
from nightlab.per_example import Examples, average, paired_se
from nightlab.types import Metric
from synthetic import wilson

TRAIN = 600  # the fixed training set: the first TRAIN images of a fixed shuffle; the rest is the pool
BASE = {"n_train": 200, "n_estimators": 40, "min_samples_leaf": 1, "max_features": "sqrt"}
# label → what the proposal changes; config 0 is the baseline
CONFIGS = {
    "baseline (200 images, 40 trees)": {},
    "train on 150 images": {"n_train": 150},
    "train on 225 images": {"n_train": 225},
    "train on 250 images": {"n_train": 250},
    "train on 300 images": {"n_train": 300},
    "train on 350 images": {"n_train": 350},
    "train on 400 images": {"n_train": 400},
    "train on 600 images": {"n_train": 600},
    "20 trees": {"n_estimators": 20},
    "80 trees": {"n_estimators": 80},
    "min_samples_leaf 3": {"min_samples_leaf": 3},
    "max_features 0.06": {"max_features": 0.06},
}
SMOOTH = 0.01  # log-loss of the predicted probabilities mixed with 1% of uniform, so a 0 is finite
METRIC = Metric("val_loss", "minimize")
SEEDED = "nightlab, seeded"  # the same learner with train.py reading NIGHTLAB_SEED: seed noise is measured
RULES = ("nightlab default", "plain gate", SEEDED)


def fit_all(seeds: int) -> dict[str, np.ndarray]:
    """Per-example values on the pool, [config, seed, example], for each metric."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    train, pool = order[:TRAIN], order[TRAIN:]
    out = {name: np.empty((len(CONFIGS), seeds, len(pool))) for name in ("0/1 error", "log-loss")}
    for c, change in enumerate(CONFIGS.values()):
        cfg = {**BASE, **change}
        rows = train[:cfg.pop("n_train")]
        for s in range(seeds):
            model = RandomForestClassifier(random_state=s, n_jobs=1, **cfg).fit(x[rows], y[rows])
            p = model.predict_proba(x[pool])
            out["0/1 error"][c, s] = p.argmax(1) != y[pool]
            truth = p[np.arange(len(pool)), y[pool]]
            out["log-loss"][c, s] = -np.log((1 - SMOOTH) * truth + SMOOTH / 10)
    return out


class Session:
    """One session's validation split: the per-example values of any state on it, cached. A state is
    (configuration, seeds): one seed for a deterministic train.py, its runs' seeds for a seeded one."""

    def __init__(self, values: np.ndarray, val: np.ndarray, test: np.ndarray, seeds: list[int]) -> None:
        self.values, self.val, self.test, self.cache = values, val, test, {}
        self.seeds, self.next = seeds, 0

    def fresh(self) -> int:
        """A seed this session has not used lately (NIGHTLAB_SEED differs for every run of the loop)."""
        self.next += 1
        return self.seeds[self.next % len(self.seeds)]

    def run(self, c: int, seed: int) -> Examples:
        if (c, seed) not in self.cache:
            self.cache[c, seed] = Examples(array("d", self.values[c, seed][self.val].tobytes()))
        return self.cache[c, seed]

    def examples(self, state: tuple[int, tuple[int, ...]]) -> Examples:
        return average([self.run(state[0], seed) for seed in state[1]])

    def runs(self, state: tuple[int, tuple[int, ...]]) -> list[float]:
        return [self.run(state[0], seed).mean for seed in state[1]]

    def test_value(self, state: tuple[int, tuple[int, ...]]) -> float:
        return float(np.mean([self.values[state[0], seed][self.test].mean() for seed in state[1]]))

    def gap(self, state: tuple[int, tuple[int, ...]]) -> float:
        return float(np.mean(self.runs(state))) - self.test_value(state)


def baseline(rule: str, s: Session) -> tuple[int, tuple[int, ...]]:
    """The baseline's state: one run of deterministic code (two identical runs count as one), else 5 seeds."""
    return (0, (s.seeds[0],)) if rule != SEEDED else (0, tuple(s.fresh() for _ in range(KeepConfig().noise_runs)))


def propose(rule: str, s: Session, best: tuple[int, tuple[int, ...]], config: int, seed_only: bool,
            new_seed: int) -> tuple[int, tuple[int, ...]]:
    """A proposal's first run. Deterministic code: a seed-only change runs the new hard-coded seed, a real change
    keeps the best's seed. Seeded code ignores a hard-coded seed: every run gets a fresh NIGHTLAB_SEED."""
    if rule == SEEDED:
        return config, (s.fresh(),)
    return (config, (new_seed,)) if seed_only else (config, best[1])


def kept(rule: str, s: Session, cand: tuple[int, tuple[int, ...]], best: tuple[int, tuple[int, ...]],
         sigma: float) -> tuple[bool, tuple[int, tuple[int, ...]]]:
    """The loop's decision (confirmation runs included for seeded code) and the candidate's final state."""
    while True:
        c, b = s.examples(cand), s.examples(best)
        eval_se = paired_se(c, b) if rule != "plain gate" else None
        runs, best_runs = s.runs(cand), s.runs(best)
        d = decide(METRIC, runs, statistics.fmean(best_runs), sigma, KeepConfig(), distinct(best_runs), eval_se)
        if d.verdict != Verdict.CONFIRM:
            return d.verdict == Verdict.KEEP, cand
        cand = (cand[0], (*cand[1], s.fresh()))


@dataclass
class Tally:
    kept: int = 0
    trials: int = 0
    gaps: list[float] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)

    def add(self, k: bool) -> None:
        self.kept, self.trials = self.kept + k, self.trials + 1

    def cell(self) -> str:
        lo, hi = wilson(self.kept, self.trials)
        return f"{self.kept / max(1, self.trials):6.1%} [{lo:.1%}-{hi:.1%}]"


def mean_ci(xs: list[float]) -> str:
    m, half = float(np.mean(xs)), 1.96 * float(np.std(xs, ddof=1)) / math.sqrt(len(xs))
    return f"{m:+.4f} ± {half:.4f}"


def measure(values: np.ndarray, sessions: int, trials: int, n_val: int, seed: int) -> dict:
    n_configs, n_seeds, n_pool = values.shape
    truth = values.mean(axis=(1, 2))  # each configuration's true metric: all seeds, the whole pool
    se = float(np.mean(values[0].std(axis=1, ddof=1))) / math.sqrt(n_val)  # the baseline's validation SE
    effect = (truth[0] - truth) / se  # positive = better than the baseline, in validation SEs
    rng = np.random.default_rng(seed)

    def session() -> Session:
        order = rng.permutation(n_pool)
        return Session(values, order[:n_val], order[n_val:], [int(v) for v in rng.permutation(n_seeds)])

    def start(r: str, s: Session) -> tuple[tuple[int, tuple[int, ...]], float]:
        base = baseline(r, s)
        return base, (noise(s.runs(base)) or 0.0) if r == SEEDED else 0.0

    noop, first = {r: Tally() for r in RULES}, {r: Tally() for r in RULES}
    for _ in range(sessions):
        s = session()
        for r in RULES:
            base, sigma = start(r, s)
            best = base
            for t in range(1, trials + 1):
                k, cand = kept(r, s, propose(r, s, best, best[0], True, s.seeds[t % n_seeds]), best, sigma)
                noop[r].add(k)
                if t == 1:
                    first[r].add(k)
                best = cand if k else best
            noop[r].gaps.append(s.gap(best) - s.gap(base))

    real = {(r, c): Tally() for r in RULES for c in range(1, n_configs) if effect[c] > 0}
    for _ in range(sessions):
        s = session()
        bases = {r: start(r, s) for r in RULES}
        for r, c in real:
            base, sigma = bases[r]
            real[r, c].add(kept(r, s, propose(r, s, base, c, False, 0), base, sigma)[0])

    mixed = {r: Tally() for r in RULES}
    for _ in range(sessions):
        s = session()
        stream = [(bool(rng.random() < 0.5), int(rng.integers(1, n_configs)), s.seeds[t % n_seeds])
                  for t in range(1, trials + 1)]
        for r in RULES:
            base, sigma = start(r, s)
            best = base
            for seed_only, step, new_seed in stream:
                # a seed-only change keeps the configuration; a real one moves to another configuration
                config = best[0] if seed_only else (best[0] + step) % n_configs
                k, cand = kept(r, s, propose(r, s, best, config, seed_only, new_seed), best, sigma)
                best = cand if k else best
            mixed[r].gaps.append(s.gap(best) - s.gap(base))
            mixed[r].gains.append(s.test_value(base) - s.test_value(best))
    return {"truth": truth, "se": se, "effect": effect, "noop": noop, "first": first, "real": real, "mixed": mixed,
            **lottery(values[0], n_val)}


def lottery(v: np.ndarray, n_val: int) -> dict:
    """Why a seed-only change can pass a paired test: two seeds give two models whose difference is real on
    the whole population (the seed lottery), not only on the validation examples. Over all seed pairs of the
    baseline: the paired SE of their difference on n_val examples, and the spread of their difference on the
    pool less the part of it the pool's own finiteness explains."""
    a, b = np.triu_indices(v.shape[0], 1)
    d = v[a] - v[b]
    pool_se2 = d.var(axis=1, ddof=1) / d.shape[1]
    return {"seed_pse": float(np.sqrt(np.mean(pool_se2 * d.shape[1] / n_val))),
            "lottery": float(np.sqrt(max(0.0, d.mean(axis=1).var() - pool_se2.mean())))}


def at(effects: list[float], rates: list[float], target: float) -> float:
    """The kept rate at `target` SEs, linearly interpolated between the configurations around it."""
    pts = sorted(zip(effects, rates))
    if not pts or not pts[0][0] <= target <= pts[-1][0]:
        return float("nan")
    return float(np.interp(target, [e for e, _ in pts], [r for _, r in pts]))


def report(name: str, m: dict, sessions: int, trials: int, n_val: int) -> None:
    names = list(CONFIGS)
    print(f"\n== {name}: baseline {m['truth'][0]:.4f}, validation SE {m['se']:.4f} ({n_val} examples) ==")
    print("true effects (all seeds, whole pool; + = better, in validation SEs): "
          + ", ".join(f"{names[c]} {m['effect'][c]:+.2f}" for c in range(1, len(names))))
    print(f"seed-only change: paired SE {m['seed_pse']:.4f} ({m['seed_pse'] / m['se']:.2f} SE); seed lottery (the two "
          f"models' true difference) sd {m['lottery']:.4f} ({m['lottery'] / m['seed_pse']:.2f} paired SE)")
    print(f"{'':<18}{'no-effect kept':>22}{'first trial':>22}{'real at 2 SE':>14}{'gap, no-effect':>22}"
          f"{'gap, mixed':>22}{'test gain, mixed':>22}")
    rates = {}
    for r in RULES:
        cs = [c for (rr, c) in m["real"] if rr == r]
        rates[r] = at([m["effect"][c] for c in cs], [m["real"][r, c].kept / m["real"][r, c].trials for c in cs], 2.0)
        mx = m["mixed"][r]
        print(f"{r:<18}{m['noop'][r].cell():>22}{m['first'][r].cell():>22}{rates[r]:>14.1%}"
              f"{mean_ci(m['noop'][r].gaps):>22}{mean_ci(mx.gaps):>22}{mean_ci(mx.gains):>22}")
    print("real kept, first trial after the baseline, by configuration:")
    for c in sorted({c for _, c in m["real"]}, key=lambda c: m["effect"][c]):
        cells = "".join(f"{r:>20}: {m['real'][r, c].cell()}" for r in RULES)
        print(f"  {names[c]:<26} {m['effect'][c]:+5.2f} SE{cells}")
    for r in ("nightlab default", SEEDED):
        ratio = {k: abs(float(np.mean(m[k][r].gaps)) / float(np.mean(m[k]["plain gate"].gaps))) for k in ("noop", "mixed")}
        print(f"targets, {r}: no-effect kept {m['noop'][r].kept / m['noop'][r].trials:.1%} (<= 5%), real at 2 SE "
              f"{rates[r]:.1%} (>= 80%), |gap| {ratio['noop']:.0%} (no-effect stream) and {ratio['mixed']:.0%} (mixed "
              "stream) of the plain gate's (<= 30%)")


def main() -> None:
    args = [int(a) for a in sys.argv[1:5]]
    sessions, trials, seeds, n_val = args + [2000, 10, 24, 300][len(args):]
    start = time.monotonic()
    values = fit_all(seeds)
    fitted = time.monotonic() - start
    n_pool = next(iter(values.values())).shape[2]
    print(f"eval noise: random forest on scikit-learn's digits, seed hard-coded; {len(CONFIGS)} configurations x "
          f"{seeds} seeds fitted in {fitted:.0f} s; training set {TRAIN}, pool {n_pool} = validation {n_val} + test "
          f"{n_pool - n_val} (redrawn each session)")
    for i, (name, v) in enumerate(values.items()):
        report(name, measure(v, sessions, trials, n_val, seed=i), sessions, trials, n_val)
    print(f"\n{time.monotonic() - start:.0f} s in all")


if __name__ == "__main__":
    main()
