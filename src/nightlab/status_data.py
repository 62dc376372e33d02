"""What `status` and `log` show, as data: their `--json` objects (users' scripts read them, so keep the fields
stable) and the cells of their tables, shared by the rich tables (views.py) and the plain ones (quick_views.py)
so that both say the same. Imports stay light: no config schema, no rich (benchmarks/startup.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nightlab.ledger import Ledger, TrialRecord, best_of
from nightlab.types import Status

if TYPE_CHECKING:
    from collections.abc import Iterator

# each status's colour, in rich's style names (the plain tables translate them)
STYLE = {"keep": "bold green", "baseline": "bold cyan", "discard": "dim", "crash": "red", "timeout": "red",
         "rejected": "yellow", "invalid": "magenta", "lost": "dim", "running": "blue", "held": "bold yellow"}


class _Metric(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def goal(self) -> str: ...


class Configured(Protocol):
    """What these views read of a config: the full one (config.Config) or the read-only commands' (checked_config)."""

    @property
    def metric(self) -> _Metric: ...


def log_json(trials: list[TrialRecord]) -> list[dict]:
    return [t.public() for t in trials]


def evidence(ledger: Ledger) -> dict:
    """What the keep rule could measure for this tag (known once the baseline finished)."""
    examples, deterministic, noise = ledger.get("examples"), ledger.get("deterministic"), ledger.get("noise")
    known = deterministic is not None or noise is not None  # set when the baseline ends (noise alone: an older tag)
    note = None
    if known:
        from nightlab.decide import evidence_note

        note = evidence_note(noise, bool(deterministic), examples is not None)
    return {"deterministic": bool(deterministic), "examples": examples, "eval_se": ledger.get("eval_se"),
            "keep_rule": note}


def status_json(cfg: Configured, tag: str, trials: list[TrialRecord], noise: float | None, branch: str,
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


def status_object(cfg: Configured, tag: str, ledger: Ledger, state: Path) -> dict:
    """The `nightlab status --json` object of the tag whose ledger and state directory these are."""
    data = status_json(cfg, tag, ledger.trials(), ledger.get("noise"), f"nightlab/{tag}", evidence(ledger))
    return data | {"verify": ledger.latest_verify(), "slots": slots_of(ledger, always=True, queue=queued(state))}


def fmt(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.5g}" if sign else f"{v:.6g}"


TRIAL_COLUMNS = ("n", "status", "", "delta", "phase", "s", "description")  # "": the metric's name


def trial_cells(t: TrialRecord) -> list[str]:
    """A trial's row in the trials table, one string per TRIAL_COLUMNS."""
    text = t.description if t.status not in ("crash", "timeout", "rejected", "invalid") else \
        f"{t.description} [{t.reason}]" if t.description else t.reason
    if t.findings:
        from nightlab.audit import summary  # its checks' patterns are not needed for the trials without findings

        text += f" [audit: {summary(t.findings)}]"
    return [str(t.n), t.status, fmt(t.metric), fmt(t.delta, True), t.phase, f"{t.seconds:.0f}", text]


def summary_rows(s: dict) -> Iterator[tuple[str, str, str]]:
    """The summary's rows of a status_json: (key, text, style), the style "yellow" for a warning."""
    pct = ""
    if s["delta"] is not None and s["baseline"]:
        pct = f" ({100 * s['delta'] / abs(s['baseline']):+.1f}%)"
    noise = f" ± {s['noise']:.3g}" if s["noise"] else " (deterministic)" if s.get("deterministic") else ""
    yield "tag", f"{s['tag']}  (branch {s['branch']})", ""
    yield "trials", f"{s['trials']} after the baseline, {s['kept']} kept", ""
    yield (s["metric_name"], f"baseline {fmt(s['baseline'])}{noise} → best {fmt(s['best'])} "
                             f"(trial {s['best_trial']}, delta {fmt(s['delta'], True)}{pct}; {s['goal']})", "")
    yield "time", f"{s['seconds'] / 60:.1f} min of runs, {s['agent_seconds'] / 60:.1f} min of the agent", ""
    if s.get("examples"):
        yield "evaluation", f"{s['examples']} examples per run, σ {s['eval_se']:.3g} (paired comparisons)", ""
    if s.get("keep_rule"):
        yield "keep rule", s["keep_rule"], "yellow" if "no noise measured" in s["keep_rule"] else ""
    if s.get("flagged"):
        held = f"; held: {', '.join(map(str, s['held']))} (nightlab accept N / nightlab reject N)" if s["held"] else ""
        yield "audit", f"suspicious: trial {', '.join(map(str, s['flagged']))}{held}", "yellow"
    if s["phase"]:
        yield "phase", s["phase"], ""
    if s["cost_usd"]:
        yield "cost", f"${s['cost_usd']:.2f}", ""


SLOT_COLUMNS = ("slot", "now", "runs", "lost", "busy", "hardware")
SLOT_RIGHT = ("slot", "runs", "lost", "busy")  # right-justified


def slot_cells(s: dict) -> list[str]:
    """A slot's row in the slots table, one string per SLOT_COLUMNS."""
    now = f"trial {s['trial']} run {s['run']} ({s['for_s']:.0f}s)" if s["trial"] is not None else "idle"
    if q := s.get("queue"):
        now += f" · {q.get('where', '')} {q.get('state', '')}"
    busy = f"{100 * s['busy']:.0f}%" if s["busy"] is not None else "—"
    return [str(s["slot"]), now, str(s["runs"]), str(s["lost"]), busy, s["hardware"]]


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
