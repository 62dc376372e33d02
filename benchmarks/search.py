"""Which search gives more verified improvement per compute-hour? Arms compared through `nightlab study`.

Two projects:
- synthetic: a landscape with interacting knobs where one-knob moves get stuck (A and B sit in a narrow valley
  and must move together; the best D depends on C); its runs stand in for training by waiting half their budget
  (so a short screening budget costs less), with seed noise that grows at short budgets;
- quickstart: the bundled digits MLP (numpy), at a shorter budget than its default so that R sessions fit.

Arms (the first is the reference): today's default before issue 17 (optuna over every constant, 10 random
start-up trials), the local-search agent (the new default), + screening, + the frontier policy.

    python benchmarks/search.py --project synthetic --sessions 5 --compute 20
    python benchmarks/search.py --project quickstart --sessions 5 --compute 40 --budget 2

Resumable: rerun the same command (the project directory and the study name are fixed by the arguments).
Prints the study's table: verified gain and verified gain per compute-hour per arm, 90% t-intervals.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from synthetic import BASE  # benchmarks/ is on the path when this script runs

ARMS = {
    "global-tpe": "agent.knobs=0, agent.startup_trials=10",  # the optuna agent's default
    "local": "agent.knobs=3, agent.startup_trials=5",  # small moves (what the quickstart sets)
    "local+screen": "agent.knobs=3, agent.startup_trials=5, search.screen_budget_s={screen}",
    "local+frontier": 'agent.knobs=3, agent.startup_trials=5, search.policy="frontier"',
}

SYNTHETIC = '''"""A synthetic landscape with interacting knobs (benchmarks/search.py)."""
import os
import random
import time

A = 1.0
B = 1.0
C = 1.0
D = 2.0
E = 2.0

budget = float(os.environ.get("NIGHTLAB_BUDGET_S", "1"))
rng = random.Random(os.environ.get("NIGHTLAB_SEED", "0"))
time.sleep(budget / 2)  # stands in for training: compute grows with the budget
# A and B in a narrow valley (they must move together towards A = B = 2.5); D's best is 2 C; E alone
f = 3 * (A - B) ** 2 + 0.3 * (A + B - 5) ** 2 + (D - 2 * C) ** 2 + 0.3 * (C - 1.5) ** 2 + 0.1 * (E - 3) ** 2
# a short run ranks the same way, with more seed noise
print(f"val_loss: {1 + f + rng.gauss(0, 0.05 / budget ** 0.5):.6f}")
'''
# synthetic.py's project settings, with the optuna agent and the default sandbox
SYNTHETIC_TOML = BASE.replace('name = "scripted"', 'name = "optuna"').replace('"process"', '"auto"') + \
    "[report]\nhtml = false\n"


def git_project(root: Path) -> None:
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)


def make(project: str, root: Path, budget: float) -> None:
    """The project, once (a rerun resumes the study in it)."""
    if (root / ".git").is_dir():
        return
    root.mkdir(parents=True, exist_ok=True)
    if project == "synthetic":
        (root / "train.py").write_text(SYNTHETIC)
        (root / "nightlab.toml").write_text(SYNTHETIC_TOML)
    else:
        shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "quickstart", root, dirs_exist_ok=True)
        toml = root / "nightlab.toml"
        toml.write_text(toml.read_text().replace("budget_s = 8", f"budget_s = {budget:g}"))
    ignore = root / ".gitignore"
    ignore.write_text((ignore.read_text() if ignore.is_file() else "") + "data/\n.nightlab/\n")
    git_project(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", choices=["synthetic", "quickstart"], default="synthetic")
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--compute", type=float, default=20, help="seconds of runs per session")
    ap.add_argument("--budget", type=float, default=2, help="quickstart: run.budget_s")
    ap.add_argument("--seeds", type=int, default=3, help="fresh seeds to verify each session's best")
    ap.add_argument("--arms", default=",".join(ARMS), help="which arms, comma-separated, the reference first")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/nightlab-bench-search"))
    args = ap.parse_args()
    root = args.dir / (args.project if args.project == "synthetic" else f"quickstart-b{args.budget:g}")
    make(args.project, root, args.budget)
    screen = 0.25 if args.project == "synthetic" else args.budget / 4
    cmd = [sys.executable, "-c", "from nightlab.cli import main; main()", "study", "--name",
           f"s{args.sessions}-c{args.compute:g}", "--sessions", str(args.sessions), "--compute", str(args.compute),
           "--seeds", str(args.seeds)]
    for arm in args.arms.split(","):
        cmd += ["--arm", f"{arm}: {ARMS[arm].format(screen=screen)}".rstrip(": ")]
    print(f"{args.project} in {root}:", " ".join(cmd[3:]), flush=True)
    sys.exit(subprocess.run(cmd, cwd=root).returncode)


if __name__ == "__main__":
    main()
