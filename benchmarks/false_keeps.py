"""How often a change that does nothing is kept: nightlab's default rule beside the strict-better rule.

Drives the real loop: SESSIONS sessions (each its own baseline and noise estimate) of TRIALS no-op
trials each, the same seeds for both rules. Then the same loop decisions with the real decide() over
many more sessions, for a tight estimate. Target: at most 5% for nightlab's default.

    python benchmarks/false_keeps.py [SESSIONS=20] [TRIALS=5] [SIMULATED_SESSIONS=20000]
"""

from __future__ import annotations

import sys
import time

from nightlab.decide import decide
from synthetic import (LEGACY, RULES, SIGMA, Outcome, keep_config, legacy_decide, loop_session, rule_label, simulate,
                       train_py, wilson)


def main() -> None:
    sessions, trials = (int(a) for a in (sys.argv[1:3] + ["20", "5"][len(sys.argv[1:3]):]))
    simulated = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
    real = {rule: Outcome() for rule in RULES}
    start = time.monotonic()
    for s in range(sessions):
        candidates = [train_py(s, noop=k + 1) for k in range(trials)]  # each differs only in a dead knob
        for rule in RULES:
            for status, runs in loop_session(s, rule, candidates):
                real[rule].add(status == "keep", runs)
    took = time.monotonic() - start
    print(f"false keeps: {sessions * trials} no-op trials through the real loop ({sessions} sessions x {trials}, "
          f"noise sigma {SIGMA}, seeds fixed), {took:.0f} s")
    print(f"{'rule':<60} {'kept':>8} {'rate':>7} {'95% CI':>15} {'runs/trial':>11}")
    for rule, o in real.items():
        lo, hi = wilson(o.kept, o.trials)
        print(f"{rule_label(rule):<60} {o.kept:>3}/{o.trials:<4} {o.rate:>6.1%} {f'{lo:.1%}-{hi:.1%}':>15} "
              f"{o.runs / o.trials:>11.2f}")
    for per_session in sorted({trials, 1}, reverse=True):
        print(f"\nthe same decisions with the real decide(), {simulated} sessions x {per_session} no-op trial(s) "
              "(seed 0)" + (": the first trial after the baseline only" if per_session == 1 else ""))
        for label, keep, rule in [*((rule_label(r), keep_config(r), decide) for r in RULES), (*LEGACY, legacy_decide)]:
            _row(label, simulate(keep, 0.0, simulated, per_session, seed=0, rule=rule))


def _row(label: str, o: Outcome) -> None:
    lo, hi = wilson(o.kept, o.trials)
    print(f"{label:<60} {o.kept:>8} {o.rate:>6.2%} {f'{lo:.2%}-{hi:.2%}':>15} {o.runs / o.trials:>11.2f}")

if __name__ == "__main__":
    main()
