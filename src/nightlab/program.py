"""program.md and its phases, the scratchpad, and the brief an agent gets for one trial."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nightlab.config import Config
from nightlab.ledger import TrialRecord
from nightlab.types import Brief, Status

PHASE = re.compile(r"^#{2,3}\s+Phase\s+(\d+)\s*[—–:-]+\s*(.+?)\s*$", re.MULTILINE)
SCRATCHPAD = """# Scratchpad

## Current best

## What worked

## What didn't

## Next ideas
"""
RECENT = 15
# The editable files are shown in the brief when together they are at most this many bytes (about 4,000
# tokens): a small model then need not spend a turn, or a guess, reading them. Larger files cost every trial
# that many tokens, and read_file shows them anyway.
INLINE_BYTES = 16_000


@dataclass(frozen=True)
class Phase:
    number: int
    title: str
    body: str

    @property
    def label(self) -> str:
        return f"{self.number} {self.title}"


def parse(text: str) -> tuple[str, list[Phase]]:
    """Split program.md into its general part and its `## Phase N — Title` sections."""
    matches = list(PHASE.finditer(text))
    if not matches:
        return text, []
    general = text[: matches[0].start()]
    phases = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        phases.append(Phase(int(m.group(1)), m.group(2), text[m.end():end].strip()))
    return general.strip(), phases


def current_phase(phases: list[Phase], trials: list[TrialRecord], cfg: Config) -> Phase | None:
    """The active phase: advance past a phase once its trial count or plateau gate is reached."""
    if not phases:
        return None
    labels = [p.label for p in phases]
    last = next((t.phase for t in reversed(trials) if t.phase in labels), labels[0])
    i = labels.index(last)
    in_phase = [t for t in trials if t.phase == last and t.n > 0 and t.status != Status.RUNNING]
    streak = 0
    for t in reversed(in_phase):
        if t.status == Status.KEEP:
            break
        streak += 1
    gates = cfg.phases
    done = (gates.trials and len(in_phase) >= gates.trials) or (gates.plateau and streak >= gates.plateau)
    return phases[min(i + 1, len(phases) - 1)] if done else phases[i]


def read_program(cfg: Config) -> tuple[str, list[Phase]]:
    path = cfg.root / cfg.project.program
    return parse(path.read_text(errors="replace")) if path.is_file() else ("", [])  # any encoding: it is prose


def has_phases(cfg: Config) -> bool:
    return bool(read_program(cfg)[1])


def ensure_scratchpad(workdir: Path, name: str) -> None:
    path = workdir / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)  # e.g. scratchpad = "notes/scratchpad.md"
        path.write_text(SCRATCHPAD)


def trial_table(trials: list[TrialRecord], noise: float | None) -> str:
    rows = ["| n | status | metric | delta | phase | description |", "|---|---|---|---|---|---|"]
    pm = f" ± {noise:.4g}" if noise else ""
    for t in trials[-RECENT:]:
        metric = f"{t.metric:.6g}{pm}" if t.metric is not None else "—"
        delta = f"{t.delta:+.4g}" if t.delta is not None else ""
        rows.append(f"| {t.n} | {t.status} | {metric} | {delta} | {t.phase} | {t.description or t.reason} |")
    return "\n".join(rows)


def noise_text(noise: float | None, eval_se: float | None) -> str:
    seed = "none: the code gives the same number every run" if noise == 0 else f"{noise:.4g}" if noise else "unknown"
    evaluation = f"; evaluation noise (which examples are in the validation split): {eval_se:.4g}" if eval_se else ""
    return f"run-to-run noise: {seed}{evaluation}"


def editable_text(cfg: Config, workdir: Path) -> str:
    """The editable files as the trial starts, in fenced blocks ('' when they are larger than INLINE_BYTES)."""
    files = [(name, workdir / name) for name in cfg.project.editable]
    if sum(p.stat().st_size for _, p in files if p.is_file()) > INLINE_BYTES:
        return ""
    blocks = [f"### {name}\n\n````{'python' if name.endswith('.py') else ''}\n{p.read_text(errors='replace').rstrip()}"
              "\n````" for name, p in files if p.is_file()]
    return "## The editable files as they are now\n\n" + "\n\n".join(blocks) if blocks else ""


def brief(cfg: Config, n: int, trials: list[TrialRecord], best: float | None, noise: float | None,
          scratchpad: str, failure_tail: str, eval_se: float | None = None, workdir: Path | None = None,
          reply: str = "", program: tuple[str, list[Phase]] | None = None) -> Brief:
    """What the agent is told for trial `n`. `reply` is the agent's own closing instructions (agents.reply), last
    since small models do what the last paragraph says; with it, small editable files in `workdir` are shown.

    What stays the same from trial to trial (program.md, the phase, the rules, the files until a keep) comes
    first and what changes (the trial, the standings, the scratchpad) after it, so that a server's prompt
    cache reuses the first part: on a CPU, reading the prompt is most of a local model's time. `program`:
    read_program(cfg), when the caller has it already."""
    general, phases = program or read_program(cfg)
    phase = current_phase(phases, trials, cfg)
    parts = [general, f"## Current phase: Phase {phase.number} — {phase.title}\n\n{phase.body}" if phase else "",
             rules(cfg), editable_text(cfg, workdir) if reply and workdir else ""]
    best_text = f"{best:.6g}" if best is not None else "unknown"
    parts.append(f"## Trial {n}: make ONE experiment\n\nWhere things stand. Metric: `{cfg.metric.name}` "
                 f"({cfg.metric.goal}). Best so far: {best_text}; {noise_text(noise, eval_se)}.\n\n"
                 f"{trial_table(trials, noise)}")
    if failure_tail:
        parts.append(f"## The last failure's log tail\n\n```\n{failure_tail}\n```")
    parts.append(f"## Scratchpad ({cfg.project.scratchpad})\n\n{scratchpad}")
    if reply:
        parts.append(f"## Reply\n\n{reply}")
    text = "\n\n".join(p for p in parts if p)
    return Brief(trial=n, text=text, editable=list(cfg.project.editable), metric=cfg.primary, best=best,
                 noise=noise, phase=phase.label if phase else "")


def rules(cfg: Config) -> str:
    constraints = ", ".join(f"{c.name} ≤ {c.max:g}" if c.max is not None else f"{c.name} ≥ {c.min:g}"
                            for c in cfg.metric.constraints) or "none"
    return ("## Rules\n\n"
            f"- Edit only {', '.join(cfg.project.editable)}, and update {cfg.project.scratchpad} "
            "with what you tried and learned.\n"
            "- One change per trial. No new files, no new dependencies.\n"
            f"- Training gets a fixed budget of {cfg.run.budget_s:g} s (NIGHTLAB_BUDGET_S); "
            f"it is killed at {cfg.run.timeout_s:g} s.\n"
            f"- Hard constraints: {constraints}.\n"
            "- Do not run training yourself: the harness runs it, measures it and keeps or reverts your change.")
