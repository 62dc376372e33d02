"""Helpers for the red-team suite: a hostile train.py run through the real CLI under the real bwrap backend.

Each script reports what it tried as `ATTEMPT <name> OK|FAILED <detail>` lines; the tests read those from
run.log and, above all, check the host afterwards (files, processes, the ledger), never trusting the
script's own word for what did not happen.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nlkit import Project, make_project

PRELUDE = '''\
import json, os, signal, socket, sys, time

def attempt(name, fn):
    try:
        result = fn()
    except BaseException as e:
        print(f"ATTEMPT {name} FAILED {type(e).__name__}: {e}"[:400], flush=True)
        return None
    print(f"ATTEMPT {name} OK {result!r}"[:400], flush=True)
    return result

LR = 0.1
'''
EPILOGUE = '''
print("val_loss: 1.0")
print("peak_memory_gb: 0.1")
'''
SECRET = "sk-ant-REDTEAM-DUMMY-SECRET-4242"
# Processes until refused; each child's command line holds {marker}, to look for survivors on the host.
FORK_BOMB = '''
import subprocess
procs = []
def bomb():
    for _ in range(10000):
        procs.append(subprocess.Popen(["sh", "-c", "sleep 60 # {marker}"]))
attempt("fork_bomb", bomb)
print(f"forked: {{len(procs)}}")
'''


def forked(log: str) -> int:
    """How many processes FORK_BOMB started, as it printed it: a shell it started may write into the same
    line ("forked: 33sh: Cannot fork"), since print() writes the text and its newline separately."""
    found = re.search(r"forked: (\d+)", log)
    assert found, f"the fork bomb did not say how far it got:\n{log[-2000:]}"
    return int(found.group(1))


def sandbox_config(timeout_s: float = 20, **sandbox: object) -> dict:
    return {"sandbox": {"backend": "bwrap", "memory_gb": 2, "max_pids": 512, **sandbox},
            "run": {"command": "python train.py", "budget_s": 1, "timeout_s": timeout_s, "grace_s": 0.5}}


@dataclass
class Outcome:
    proj: Project
    proc: subprocess.CompletedProcess
    run_dir: Path
    log: str

    def attempts(self) -> dict[str, tuple[bool, str]]:
        found = {}
        # not anchored: a child's output (e.g. `sh: Cannot fork`) may share the line
        for m in re.finditer(r"ATTEMPT (\S+) (OK|FAILED) ?(.*)$", self.log, re.MULTILINE):
            found[m.group(1)] = (m.group(2) == "OK", m.group(3))
        return found

    def failed(self, name: str) -> str:
        """Assert the script tried `name` and was refused; return how it was refused."""
        attempts = self.attempts()
        assert name in attempts, f"the script never reported {name!r}:\n{self.log[-3000:]}"
        ok, detail = attempts[name]
        assert not ok, f"{name} succeeded inside the sandbox: {detail}"
        return detail

    @property
    def sandbox(self) -> dict:
        import json

        return json.loads((self.run_dir / "sandbox.json").read_text())


def attack(tmp_path: Path, body: str, files: dict[str, str] | None = None, epilogue: str = EPILOGUE,
           timeout: float = 90, timeout_s: float = 20, sections: dict | None = None, **sandbox: object) -> Outcome:
    """Run PRELUDE + body (+ epilogue) as train.py through `nightlab trial --record`, with a secret in the caller's env.

    `sandbox` overrides [sandbox] keys (backend, image, limits); `sections` adds other sections (e.g. [data]).
    """
    config = sandbox_config(timeout_s, **sandbox) | (sections or {})
    proj = make_project(tmp_path, train=PRELUDE + body + epilogue, config=config, files=files,
                        extra_env={"ANTHROPIC_API_KEY": SECRET, "OPENAI_API_KEY": SECRET})
    proc = proj.nl("trial", "--record", timeout=timeout)
    runs = sorted((proj.dir / ".nightlab" / "manual").iterdir())
    assert len(runs) == 1, runs
    log = (runs[0] / "run.log").read_text(errors="replace")
    return Outcome(proj, proc, runs[0], log)
