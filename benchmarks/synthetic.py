"""Shared by false_keeps.py and power.py: a synthetic project whose metric is a known function of its knobs.

train.py reports val_loss = 1 - EFFECT * SIGMA + Gaussian noise (SIGMA), the noise drawn from a
generator seeded by (SESSION, NIGHTLAB_SEED): every figure is reproducible, nothing depends on timing.
Two ways to measure a keep rule, both with nightlab's real code:
- `loop_session`: the real loop (session.run_session, scripted agent, process sandbox, real git and SQLite);
- `simulate`: the loop's decision sequence with the real decide() and the same config, for large counts.
"""

from __future__ import annotations

import logging
import random
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nightlab import config
from nightlab.config import KeepConfig
from nightlab.decide import Decision, Verdict, decide, noise
from nightlab.session import run_session
from nightlab.types import Metric

SIGMA = 0.01
TRAIN = '''import os, random
EFFECT = 0.0  # the true improvement, in units of SIGMA
NOOP = 0  # a knob that changes nothing
SESSION = {session}
SIGMA = {sigma}
rng = random.Random(f"{{SESSION}}:{{os.environ.get('NIGHTLAB_SEED', '0')}}")
print(f"val_loss: {{1.0 - EFFECT * SIGMA + rng.gauss(0.0, SIGMA):.9f}}")
'''
BASE = """[project]
editable = ["train.py"]
protected = []
[run]
command = "python train.py"
budget_s = 1
timeout_s = 30
[metric]
name = "val_loss"
goal = "minimize"
[agent]
name = "scripted"
[sandbox]
backend = "process"
"""
# name → the [keep] section. The strict-better rule is a plain autoresearch loop's: any improvement is
# kept, no confirmation. "old defaults" is the same rule with the defaults it had before (3 and 1).
RULES = {"nightlab default": {}, "nightlab rule, old defaults": {"noise_runs": 3, "confirm": 1},
         "strict better": {"threshold": 0.0, "confirm": 0}}


@dataclass
class Outcome:
    kept: int = 0
    trials: int = 0
    runs: int = 0  # candidate runs, confirmations included

    def add(self, kept: bool, runs: int) -> None:
        self.kept, self.trials, self.runs = self.kept + kept, self.trials + 1, self.runs + runs

    @property
    def rate(self) -> float:
        return self.kept / self.trials if self.trials else 0.0


def keep_config(rule: str) -> KeepConfig:
    return KeepConfig(**RULES[rule])


def rule_label(rule: str) -> str:
    keep = keep_config(rule)
    if keep.threshold == "auto":
        return f"{rule} ({keep.noise_runs} noise runs, {keep.sigmas:g} SE, confirm {keep.confirm})"
    return f"{rule} (gain > 0, {keep.noise_runs} noise runs)"


def _keep_toml(rule: str) -> str:
    return "[keep]\n" + "".join(f"{k} = {v!r}\n" for k, v in RULES[rule].items())


def train_py(session: int, effect: float = 0.0, noop: int = 0) -> str:
    text = TRAIN.format(session=session, sigma=SIGMA)
    return text.replace("EFFECT = 0.0", f"EFFECT = {effect!r}").replace("NOOP = 0", f"NOOP = {noop}")


def _idea(k: int, text: str) -> str:
    # the whole file: whatever was kept before, the trial's train.py is exactly this one
    fence = "'" * 3  # a TOML literal multi-line string
    return f'[[idea]]\ndescription = "idea {k}"\n[[idea.edit]]\nfile = "train.py"\ncontent = {fence}{text}{fence}\n'


def loop_session(session: int, rule: str, candidates: list[str]) -> list[tuple[str, int]]:
    """One real nightlab session: baseline, then one trial per candidate train.py; (status, runs) of each."""
    logging.disable(logging.WARNING)  # the process sandbox warns on every run
    with tempfile.TemporaryDirectory(prefix="nightlab-bench-") as tmp:
        root = Path(tmp)
        (root / "train.py").write_text(train_py(session))
        (root / "nightlab.toml").write_text(BASE + _keep_toml(rule))
        (root / "ideas.toml").write_text("\n".join(_idea(k, text) for k, text in enumerate(candidates)))
        for cmd in (["init", "-q"], ["add", "train.py", "nightlab.toml"],
                    ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init"]):
            subprocess.run(["git", *cmd], cwd=root, check=True)
        out: list[tuple[str, int]] = []

        def notify(event: str, rec) -> None:
            if event == "done" and rec.n > 0:
                out.append((str(rec.status), len(rec.runs)))

        run_session(config.load(root / "nightlab.toml"), "bench", len(candidates), None, notify)
        return out


def legacy_decide(metric: Metric, runs: list[float], best: float, sigma: float | None, keep: KeepConfig,
                  best_runs: int | None = None) -> Decision:
    """nightlab 0.1's rule, for comparison only: threshold sigmas x noise (not the standard error), confirm
    band (threshold, 2 x threshold), no second chance below the threshold."""
    value = statistics.fmean(runs)
    gain, limit = metric.improvement(value, best), keep.sigmas * sigma if sigma else 0.0
    if gain <= limit:
        return Decision(Verdict.DISCARD, value, gain, limit)
    if len(runs) < 1 + keep.confirm and limit > 0 and gain < 2 * limit:
        return Decision(Verdict.CONFIRM, value, gain, limit)
    return Decision(Verdict.KEEP, value, gain, limit)


LEGACY = ("nightlab 0.1 rule (2 sigma, not SE; 3 noise runs, confirm 1)", KeepConfig(noise_runs=3, confirm=1))


def simulate(keep: KeepConfig, effect: float, sessions: int, trials: int, seed: int,
             rule: Callable[..., Decision] = decide) -> Outcome:
    """The loop's decisions (as loop.Loop.evaluate makes them) with the real decide(), in memory."""
    rng, metric, out = random.Random(seed), Metric("val_loss", "minimize"), Outcome()
    for _ in range(sessions):
        base = [rng.gauss(0.0, 1.0) for _ in range(keep.noise_runs)]
        sigma, best, best_runs = noise(base), statistics.fmean(base), len(base)
        for _ in range(trials):
            runs = [rng.gauss(-effect, 1.0)]
            while (d := rule(metric, runs, best, sigma, keep, best_runs)).verdict == Verdict.CONFIRM:
                runs.append(rng.gauss(-effect, 1.0))
            out.add(d.verdict == Verdict.KEEP, len(runs))
            if d.verdict == Verdict.KEEP:
                best, best_runs = d.value, len(runs)
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a proportion (Wilson score): honest at 0 and at small counts."""
    if n == 0:
        return 0.0, 1.0
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / d
    return max(0.0, centre - half), min(1.0, centre + half)
