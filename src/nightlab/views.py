"""What a tag shows outside its ledger: `status` and `log` (their `--json` objects, which users' scripts read,
so keep the fields stable, and their rich tables), results.tsv, and the commit message of each trial."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nightlab import project
from nightlab.audit import summary
from nightlab.config import Config
from nightlab.decide import evidence_note
from nightlab.ledger import Ledger, TrialRecord, best_of
from nightlab.types import Status

STYLE = {"keep": "bold green", "baseline": "bold cyan", "discard": "dim", "crash": "red", "timeout": "red",
         "rejected": "yellow", "invalid": "magenta", "lost": "dim", "running": "blue", "held": "bold yellow"}


def log_json(trials: list[TrialRecord]) -> list[dict]:
    return [t.public() for t in trials]


def evidence(ledger: Ledger) -> dict:
    """What the keep rule could measure for this tag (known once the baseline finished)."""
    examples, deterministic, noise = ledger.get("examples"), ledger.get("deterministic"), ledger.get("noise")
    known = deterministic is not None or noise is not None  # set when the baseline ends (noise alone: an older tag)
    note = evidence_note(noise, bool(deterministic), examples is not None) if known else None
    return {"deterministic": bool(deterministic), "examples": examples, "eval_se": ledger.get("eval_se"),
            "keep_rule": note}


def status_json(cfg: Config, tag: str, trials: list[TrialRecord], noise: float | None, branch: str,
                evidence: dict | None = None) -> dict:
    base = next((t for t in trials if t.n == 0 and t.status == Status.BASELINE), None)
    kept = [t for t in trials if t.status == Status.KEEP]
    best = best_of(trials)
    done = [t for t in trials if t.n > 0 and t.status != Status.RUNNING]
    return {
        "tag": tag,
        "trials": len(done),
        "kept": len(kept),
        "baseline": base.metric if base else None,
        "best": best.metric if best else None,
        "best_trial": best.n if best else None,
        "delta": (best.metric - base.metric) if best and base and best.metric is not None and base.metric is not None
        else None,
        "goal": cfg.metric.goal,
        "metric_name": cfg.metric.name,
        "noise": noise,
        "phase": trials[-1].phase if trials else "",
        "branch": branch,
        "seconds": sum(t.seconds for t in trials),
        "agent_seconds": sum(t.agent_seconds for t in trials),
        "cost_usd": sum(t.cost_usd for t in trials),
        "running": [t.n for t in trials if t.status == Status.RUNNING],
        "flagged": [t.n for t in trials if t.audit == "suspicious"],  # by the audit (audit.py), held or not
        "held": [t.n for t in trials if t.status == Status.HELD],  # waiting for `nightlab accept/reject N`
        **(evidence or {"deterministic": False, "examples": None, "eval_se": None, "keep_rule": None}),
    }


def fmt(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.5g}" if sign else f"{v:.6g}"


def _cut(text: str) -> Text:
    """One line in its cell, cut with an ellipsis where the column is narrower."""
    return Text(text, no_wrap=True, overflow="ellipsis")


def trials_table(trials: list[TrialRecord], metric_name: str, title: str = "") -> Table:
    """Fits the console it is printed on: no column has a minimum width rich would have to honour past the
    border, and the text columns (metric, phase, description) are the ones that give way, cut in their cells."""
    table = Table(title=title or None, show_lines=False, header_style="bold")
    columns: list[tuple[str, dict[str, Any]]] = [
        ("n", {"justify": "right", "no_wrap": True}), ("status", {"no_wrap": True}),
        (metric_name, {"justify": "right"}), ("delta", {"justify": "right", "no_wrap": True}),
        ("phase", {"max_width": 20}), ("s", {"justify": "right", "no_wrap": True}), ("description", {})]
    for col, kw in columns:
        table.add_column(_cut(col), **kw)
    for t in trials:
        text = t.description if t.status not in ("crash", "timeout", "rejected", "invalid") else \
            f"{t.description} [{t.reason}]" if t.description else t.reason
        if t.findings:
            text += f" [audit: {summary(t.findings)}]"
        table.add_row(str(t.n), Text(t.status, style=STYLE.get(t.status, "")), _cut(fmt(t.metric)),
                      fmt(t.delta, True), _cut(t.phase), f"{t.seconds:.0f}", _cut(text))
    return table


def summary_table(s: dict) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    pct = ""
    if s["delta"] is not None and s["baseline"]:
        pct = f" ({100 * s['delta'] / abs(s['baseline']):+.1f}%)"
    noise = f" ± {s['noise']:.3g}" if s["noise"] else " (deterministic)" if s.get("deterministic") else ""
    rows = [("tag", f"{s['tag']}  (branch {s['branch']})"),
            ("trials", f"{s['trials']} after the baseline, {s['kept']} kept"),
            (s["metric_name"], f"baseline {fmt(s['baseline'])}{noise} → best {fmt(s['best'])} "
                               f"(trial {s['best_trial']}, delta {fmt(s['delta'], True)}{pct}; {s['goal']})"),
            ("time", f"{s['seconds'] / 60:.1f} min of runs, {s['agent_seconds'] / 60:.1f} min of the agent"), ]
    if s.get("examples"):
        rows.append(("evaluation", f"{s['examples']} examples per run, σ {s['eval_se']:.3g} (paired comparisons)"))
    if s.get("keep_rule"):
        warn = "no noise measured" in s["keep_rule"]
        rows.append(("keep rule", f"[yellow]{escape(s['keep_rule'])}[/]" if warn else escape(s["keep_rule"])))
    if s.get("flagged"):
        held = f"; held: {', '.join(map(str, s['held']))} (nightlab accept N / nightlab reject N)" if s["held"] else ""
        rows.append(("audit", f"[yellow]suspicious: trial {', '.join(map(str, s['flagged']))}{held}[/]"))
    if s["phase"]:
        rows.append(("phase", s["phase"]))
    if s["cost_usd"]:
        rows.append(("cost", f"${s['cost_usd']:.2f}"))
    for k, v in rows:
        table.add_row(k, v)
    return table


def slots_of(ledger: Ledger, always: bool = False, queue: dict | None = None) -> list[dict]:
    """The tag's slot activity; empty for a tag run one trial at a time, unless `always` or runs are queued
    on a cluster (`queue`: see queued())."""
    slots = int(ledger.get("slots", 1))
    if not always and slots == 1 and not ledger.get("pipeline", False) and not queue:
        return []
    return slot_activity(ledger.runs(), slots, queue=queue)


def queued(state: Path) -> dict:
    """The cluster jobs of the tag's runs in flight, as the executor last saw them (Slurm writes queue.json):
    run's job id → {"where": e.g. "Slurm job 17", "state": e.g. "RUNNING"}."""
    try:
        found = json.loads((state / "queue.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def slot_activity(runs: list[dict], slots: int, now: float | None = None, queue: dict | None = None) -> list[dict]:
    """Per slot: what it runs now (and where, on a cluster), how many runs it finished, and how busy it was
    since its first run."""
    now = now or time.time()
    out = []
    for slot in range(max([slots, *[r["slot"] + 1 for r in runs if r["slot"] is not None]])):
        mine = [r for r in runs if r["slot"] == slot]
        current = next((r for r in mine if r["status"] == Status.RUNNING), None)
        busy = sum((r["finished"] or now) - r["started"] for r in mine)
        span = (max((r["finished"] or now) for r in mine) - min(r["started"] for r in mine)) if mine else 0.0
        out.append({"slot": slot, "trial": current["trial"] if current else None,
                    "run": current["k"] if current else None,
                    "for_s": now - current["started"] if current else None,
                    "runs": len([r for r in mine if r["status"] != Status.RUNNING]),
                    "lost": len([r for r in mine if r["status"] == Status.LOST]),
                    "busy_s": busy, "busy": busy / span if span else None,
                    "hardware": next((r["hardware"] for r in reversed(mine) if r["hardware"]), ""),
                    "queue": (queue or {}).get(current["job"]) if current else None})
    return out


def slots_table(slots: list[dict]) -> Table:
    table = Table(title="slots", title_justify="left")
    for col in ("slot", "now", "runs", "lost", "busy", "hardware"):
        table.add_column(col, justify="right" if col in ("slot", "runs", "lost", "busy") else "left")
    for s in slots:
        now = f"trial {s['trial']} run {s['run']} ({s['for_s']:.0f}s)" if s["trial"] is not None else "idle"
        if q := s.get("queue"):
            now += f" · {q.get('where', '')} {q.get('state', '')}"
        busy = f"{100 * s['busy']:.0f}%" if s["busy"] is not None else "—"
        table.add_row(str(s["slot"]), now, str(s["runs"]), str(s["lost"]), busy, escape(s["hardware"]))
    return table


def shown(path: Path) -> str:
    """A path relative to the current directory when it is under it (nightlab runs from the project)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def where(cfg: Config, tag: str) -> str:
    """Where a run's results are, one a line, as the user can type them from here (short enough to fit)."""
    state = project.state_dir(cfg, tag)
    lines = [f"results: {shown(state / 'results.tsv')}", f"runs:    {shown(state / 'runs')}/",
             f"branch:  nightlab/{tag}"]
    if cfg.report.html:
        lines.append(f"report:  {shown(state / 'report.html')}")
    if cfg.report.mlflow:
        from nightlab.report.mlflow import opened_with

        lines.append(f"mlflow:  {opened_with(cfg, tag, shown)}")
    return "\n".join(lines)


TSV_EXTRAS = ["n", "delta", "phase", "seconds", "cost_usd", "runs", "reason", "hardware", "agent_seconds", "agent",
              "audit", "findings"]


def write_tsv(trials: list[TrialRecord], metric_name: str, path: Path) -> None:
    """Karpathy's five columns first (commit, metric, memory_gb, status, description), then extras."""
    Tsv(path, metric_name, trials).write()


class Tsv:
    """results.tsv kept up to date trial by trial: each trial's line is made once, when it is recorded, so a
    night's thousandth trial costs what its first did (no ledger read, only the file written out again)."""

    def __init__(self, path: Path, metric_name: str, trials: list[TrialRecord]) -> None:
        self.path = path
        self.head = "\t".join(["commit", metric_name, "memory_gb", "status", "description", *TSV_EXTRAS])
        self.lines = {t.n: _tsv_line(t) for t in trials}

    def update(self, rec: TrialRecord) -> None:
        self.lines[rec.n] = _tsv_line(rec)
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join([self.head, *(self.lines[n] for n in sorted(self.lines))]) + "\n")
        os.replace(tmp, self.path)


def _tsv_line(t: TrialRecord) -> str:
    mem = t.metrics.get("peak_memory_gb", t.metrics.get("memory_gb"))
    cells = [t.commit_sha[:7], _num(t.metric), _num(mem), t.status, t.description,
             str(t.n), _num(t.delta), t.phase, f"{t.seconds:.1f}", f"{t.cost_usd:.4f}",
             ",".join(_num(r) for r in t.runs), t.reason, t.hardware or "", f"{t.agent_seconds:.1f}", t.agent,
             t.audit, summary(t.findings)]
    return "\t".join(c.replace("\t", " ").replace("\n", " ") for c in cells)


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def commit_message(rec: TrialRecord, best: TrialRecord, noise: float | None, metric_name: str) -> str:
    """A finished trial's commit message: its result against the best before it, and how it ended, so that
    `git log` of the branch tells the story even without the ledger (users and tests read this format)."""
    pm = f" ± {noise:.5g}" if noise else ""
    value = f"{rec.metric:.5f}{pm}" if rec.metric is not None else "—"
    lines = [f"trial {rec.n}: {rec.description}", "", f"{metric_name}: {value} (best {best.metric:.5f}{pm})"]
    if rec.delta is not None:
        lines.append(f"delta: {rec.delta:+.5f}")
    lines.append(f"status: {rec.status}" + (f" ({rec.reason})" if rec.reason else ""))
    if rec.phase:
        lines.append(f"phase: {rec.phase}")
    if rec.findings:
        lines.append(f"audit: {rec.audit} ({summary(rec.findings)})")
    return "\n".join(lines)
