"""The chaos suite, long form: scenarios of tests/chaosrun.py (scripted and optuna agents, process and bwrap
sandboxes, `run` and `verify`) with fresh seeds until KILLS kills have landed; every scenario must keep every
invariant and end as its uninterrupted run does. Prints where the kills landed and the invariants held.

Usage: python benchmarks/chaos.py [KILLS] [FIRST_SEED]     (defaults 500 100)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from chaosrun import Figures, Scenario, chaos  # noqa: E402  (the engine the short form in CI uses)

KINDS = [("scripted", "process", 6), ("optuna", "bwrap", 4), ("scripted", "bwrap", 6), ("optuna", "process", 4)]


def main() -> None:
    want = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    figures, scenarios, start = Figures(), 0, time.monotonic()
    while figures.total() < want:
        agent, sandbox, trials = KINDS[scenarios % len(KINDS)]
        sc = Scenario(seed=seed + scenarios, agent=agent, sandbox=sandbox, trials=trials, kills=16, verify_kills=4)
        root = Path(tempfile.mkdtemp(prefix="nightlab-chaos-"))
        try:
            chaos(root, sc, figures)  # raises on the first broken invariant, naming it
        finally:
            shutil.rmtree(root, ignore_errors=True)
        scenarios += 1
        print(f"scenario {scenarios} ({agent}, {sandbox}, seed {sc.seed}): {figures.total()} kills so far", flush=True)
    print(f"\n{figures.total()} kills in {scenarios} scenarios, {figures.invocations} invocations, "
          f"{figures.unreached} armed points not reached, {time.monotonic() - start:.0f} s")
    print("where the kills landed:")
    for where, n in figures.kills.most_common():
        print(f"  {n:>4}  {where}")
    print("invariants held (scenarios):")
    for name, n in figures.checked.items():
        print(f"  {n:>4}  {name}")


if __name__ == "__main__":
    main()
