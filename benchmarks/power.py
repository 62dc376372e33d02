"""How often a real improvement of 1, 2 or 3 sigma is kept: nightlab's default rule beside strict-better.

Drives the real loop: for each effect, SESSIONS sessions (each its own baseline and noise estimate) whose
one trial improves the metric by exactly that many noise standard deviations; the same seeds for every
rule. Then the same decisions with the real decide() over many more sessions. Target: at least 90% at 3 sigma.

    python benchmarks/power.py [SESSIONS=30] [SIMULATED_SESSIONS=50000]
"""

from __future__ import annotations

import sys
import time

from synthetic import (LEGACY, RULES, SIGMA, Outcome, keep_config, legacy_decide, loop_session, rule_label, simulate,
                       train_py, wilson)

EFFECTS = (1.0, 2.0, 3.0)


def main() -> None:
    sessions = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    simulated = int(sys.argv[2]) if len(sys.argv) > 2 else 50000
    real = {(rule, e): Outcome() for rule in RULES for e in EFFECTS}
    start = time.monotonic()
    for e in EFFECTS:
        for s in range(sessions):
            for rule in RULES:
                for status, runs in loop_session(s, rule, [train_py(s, effect=e)]):
                    real[rule, e].add(status == "keep", runs)
    took = time.monotonic() - start
    print(f"power: one real improvement per session through the real loop ({sessions} sessions per effect, "
          f"noise sigma {SIGMA}, seeds fixed), {took:.0f} s")
    header = "".join(f"{f'{e:g} sigma':>22}" for e in EFFECTS)
    print(f"{'rule':<60}{header}   (kept, 95% CI; runs/trial at 3 sigma)")
    for rule in RULES:
        cells = []
        for e in EFFECTS:
            o = real[rule, e]
            lo, hi = wilson(o.kept, o.trials)
            cells.append(f"{o.rate:>6.0%} [{lo:.0%}-{hi:.0%}]")
        print(f"{rule_label(rule):<60}" + "".join(f"{c:>22}" for c in cells)
              + f"   {real[rule, 3.0].runs / real[rule, 3.0].trials:.2f}")
    print(f"\nthe same decisions with the real decide(), {simulated} sessions per effect (seed 0):")
    for rule in RULES:
        outs = [simulate(keep_config(rule), e, simulated, 1, seed=0) for e in EFFECTS]
        print(f"{rule_label(rule):<60}" + "".join(f"{o.rate:>22.1%}" for o in outs)
              + f"   {outs[-1].runs / outs[-1].trials:.2f}")
    outs = [simulate(LEGACY[1], e, simulated, 1, seed=0, rule=legacy_decide) for e in EFFECTS]
    print(f"{LEGACY[0]:<60}" + "".join(f"{o.rate:>22.1%}" for o in outs) + f"   {outs[-1].runs / outs[-1].trials:.2f}")


if __name__ == "__main__":
    main()
