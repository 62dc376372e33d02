"""What the harness does per trial, counted (a count does not swing with the machine's load as times do): the
processes `nightlab run` starts and the files it renames into place, per trial of overhead.py's project (no-op
train.py, scripted agent, `process` sandbox), from runs of 5 and 45 trials: (count(45) - count(5)) / 40. Counted
by a Python audit hook in the nightlab process (the report's own process is not in it). Renames onto a new name
(loose objects, trial refs) are cheap; one over an existing file costs a flush of its data on ext4.

Usage: python benchmarks/trial_work.py [SRC ...]   (each SRC a `src` directory to run, e.g. of a worktree of main;
default: the installed nightlab)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from overhead import make_project

COUNTED = """
import atexit, collections, json, runpy, sys
out, seen = sys.argv[-1], collections.Counter()
def hook(event, args):
    if event == "subprocess.Popen":
        argv = [str(a) for a in (args[1] or [args[0]])]
        words = [a for a in argv if a not in ("-c", "core.quotePath=false") and not a.startswith("core.hooksPath")]
        seen["spawn " + (" ".join(words[:2]) if words[0] == "git" else words[0].rsplit("/", 1)[-1])] += 1
    elif event in ("os.rename", "os.replace"):
        path = str(args[1])
        name = path.rsplit("/", 1)[-1]
        seen["rename to " + ("a loose object" if len(name) == 38 else "a trial ref" if name.startswith("trial-")
                             else "refs/" + path.split("/refs/", 1)[1] if "/refs/" in path else name)] += 1
sys.addaudithook(hook)
atexit.register(lambda: open(out, "w").write(json.dumps(seen)))
sys.argv = ["nightlab", *sys.argv[1:-1]]
runpy.run_module("nightlab.cli", run_name="__main__")
"""
FEW, MANY = 5, 45


def counts(src: str | None, n: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, n)
        env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
        cmd = [sys.executable, "-c", COUNTED, "run", "--tag", "b", "--max-trials", str(n), "--sandbox", "process",
               str(root / "counts.json")]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads((root / "counts.json").read_text())


def main() -> None:
    for src in sys.argv[1:] or [None]:
        few, many = counts(src, FEW), counts(src, MANY)
        print(f"{src or 'installed nightlab'}: per trial")
        for key in sorted(set(few) | set(many)):
            per = (many.get(key, 0) - few.get(key, 0)) / (MANY - FEW)
            if abs(per) > 0.05:  # not the start's own
                print(f"  {per:5.2f}  {key}")


if __name__ == "__main__":
    main()
