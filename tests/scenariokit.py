"""One scripted session that walks through every trial outcome (the `scenario` fixture in conftest.py runs it
once per test session), and what the tests that share it compare."""

from __future__ import annotations

from dataclasses import dataclass

from nlkit import Project, content, idea, sub

# Trial n (after the baseline, LR = 0.1 → loss 1.04):
SCENARIO = [
    idea("raise LR to 0.3", sub("LR = 0.1", "LR = 0.3"), hypothesis="LR is too low"),  # 1 keep   (1.00)
    idea("lower LR to 0.0", sub("LR = 0.3", "LR = 0.0")),  # 2 discard (1.09)
    idea("reword a comment", sub("# knobs", "# the knobs")),  # 3 discard: a tie (1.00)
    idea("exit with code 3", sub("seed = int", "raise SystemExit(3)\nseed = int")),  # 4 crash
    idea("report NaN", sub('print(f"val_loss: {loss:.6f}")', 'print("val_loss: nan")')),  # 5 crash
    idea("forget the metric", sub('print(f"val_loss: {loss:.6f}")', 'print("no metric today")')),  # 6 crash
    idea("crash after reporting", sub('print(f"peak_memory_gb: {MEMORY}")',
                                      'print(f"peak_memory_gb: {MEMORY}")\nraise SystemExit(1)')),  # 7 crash
    idea("edit the evaluation", sub("prepared", "tampered", file="prepare.py")),  # 8 rejected
    idea("only take notes", content("# Scratchpad\n\nnothing to try\n", file="scratchpad.md")),  # 9 rejected
    idea("add a helper module", content("X = 1\n", file="helper.py"), sub("LR = 0.3", "LR = 0.31")),  # 10 rejected
    idea("use more memory", sub("MEMORY = 0.1", "MEMORY = 5.0")),  # 11 invalid (constraint)
    idea("tamper during the run", sub("seed = int", 'open("prepare.py", "a").write("# tampered\\n")\nseed = int')),  # 12 invalid
]
SCENARIO_STATUS = ["baseline", "keep", "discard", "discard", "crash", "crash", "crash", "crash",
                   "rejected", "rejected", "rejected", "invalid", "invalid"]


@dataclass
class Scenario:
    proj: Project
    proc: object  # the CompletedProcess of `nightlab run`
    before: dict  # the user's checkout before the run
    after: dict

    @property
    def ledger(self) -> list[dict]:
        return self.proj.ledger("t")


def checkout_state(proj: Project) -> dict:
    return {
        "branch": proj.git("rev-parse", "--abbrev-ref", "HEAD"),
        "head": proj.git("rev-parse", "HEAD"),
        "status": proj.git("status", "--porcelain", "--untracked-files=all"),
        "files": {p.name: p.read_text() for p in proj.dir.iterdir() if p.is_file()},
        "branches": proj.git("branch", "--list", "--format=%(refname:short)"),
    }
