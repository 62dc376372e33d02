"""A study's results: per arm the verified gains (on validation, and on the selection split when the project has
one) and the verified gain per compute-hour with t-intervals over its sessions, the answer to "is an arm better
than the first one (the default)?", and study.html with the gain-versus-compute curves (inline SVG: no extra
needed)."""

from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass

from rich.table import Table

from nightlab.stats import t_quantile
from nightlab.study import Outcome

LEVEL = 0.90
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Interval:
    mean: float
    low: float | None  # None with fewer than two sessions
    high: float | None

    def text(self, fmt: str = ".4g") -> str:
        if self.low is None or self.high is None:
            return f"{self.mean:{fmt}}"
        return f"{self.mean:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}]"


@dataclass
class ArmSummary:
    arm: str
    sessions: int
    gain: Interval
    per_hour: Interval
    compute_h: float  # mean per session
    kept: float  # mean per session
    gains: list[float]
    select_gain: Interval | None = None  # on the selection split, over the sessions measured there


def interval(values: list[float], level: float = LEVEL) -> Interval:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, None, None)
    half = t_quantile(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half)


def summarize(arms: list[str], outcomes: list[Outcome]) -> list[ArmSummary]:
    out = []
    for arm in arms:
        mine = [o for o in outcomes if o.arm == arm]
        if mine:
            select = [o.select_gain for o in mine if o.select_gain is not None]
            out.append(ArmSummary(arm, len(mine), interval([o.gain for o in mine]),
                                  interval([o.per_hour for o in mine]),
                                  statistics.fmean(o.compute_s for o in mine) / 3600,
                                  statistics.fmean(o.kept for o in mine), [o.gain for o in mine],
                                  interval(select) if select else None))
    return out


def _select(s: ArmSummary) -> str:
    return s.select_gain.text() if s.select_gain else "—"


def verdict(summaries: list[ArmSummary]) -> str:
    """Whether the arm with the highest verified gain per compute-hour beats the first arm (the default)."""
    if len(summaries) < 2:
        return "one arm: nothing to compare"
    default, best = summaries[0], max(summaries[1:], key=lambda s: s.per_hour.mean)
    d, b = default.per_hour, best.per_hour
    ratio = b.mean / d.mean if d.mean > 0 else math.inf if b.mean > 0 else math.nan
    apart = None not in (b.low, d.high) and b.low > d.high  # type: ignore[operator]
    sessions = min(default.sessions, best.sessions)
    times = f"{ratio:.2f}×" if math.isfinite(ratio) else "n/a (the reference gained nothing) ×"
    head = (f"best arm by verified gain per compute-hour: {best.arm}, {times} {default.arm} "
            f"({b.text()} vs {d.text()}, {int(LEVEL * 100)}% intervals, {sessions} sessions each)")
    if apart and ratio >= 1.5:
        return head + ": better, with intervals that do not overlap"
    why = "the intervals overlap" if not apart else f"less than 1.5× ({times})"
    return head + f": not enough evidence that it is better ({why})"


def table(summaries: list[ArmSummary], metric: str) -> Table:
    t = Table(title=f"study: verified gain in {metric} (positive = better), {int(LEVEL * 100)}% t-intervals")
    select = any(s.select_gain for s in summaries)
    for col in ("arm", "sessions", "verified gain", *(["on the selection split"] if select else []),
                "gain per compute-hour", "compute h/session", "kept/session", "gains"):
        t.add_column(col, justify="left" if col in ("arm", "gains") else "right")
    for s in summaries:
        t.add_row(s.arm, str(s.sessions), s.gain.text(), *([_select(s)] if select else []), s.per_hour.text(),
                  f"{s.compute_h:.3f}", f"{s.kept:.1f}", " ".join(f"{g:+.3g}" for g in s.gains))
    return t


def write_html(name: str, metric: str, summaries: list[ArmSummary], outcomes: list[Outcome], command: str) -> str:
    select = any(s.select_gain for s in summaries)
    rows = "".join(f"<tr><td>{html.escape(s.arm)}</td><td>{s.sessions}</td><td>{s.gain.text()}</td>"
                   + (f"<td>{_select(s)}</td>" if select else "") +
                   f"<td>{s.per_hour.text()}</td><td>{s.compute_h:.3f}</td><td>{s.kept:.1f}</td></tr>"
                   for s in summaries)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>nightlab study · "
            f"{html.escape(name)}</title><style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}"
            f"td,th{{padding:.2em .6em;text-align:right}}td:first-child{{text-align:left}}</style></head><body>"
            f"<h1>nightlab study · {html.escape(name)}</h1><p><code>{html.escape(command)}</code></p>"
            f"<h2>Verified gain in {html.escape(metric)}</h2><table id=\"arms\"><tr><th>arm</th><th>sessions</th>"
            f"<th>verified gain</th>{'<th>on the selection split</th>' if select else ''}<th>per compute-hour</th>"
            f"<th>compute h/session</th><th>kept/session</th></tr>"
            f"{rows}</table><p id=\"verdict\">{html.escape(verdict(summaries))}</p>"
            f"<h2>Gain versus compute</h2><p>In-loop estimate of the best's gain over the baseline (not verified), "
            f"mean over each arm's sessions.</p>{curves_svg(summaries, outcomes)}</body></html>\n")


def curves_svg(summaries: list[ArmSummary], outcomes: list[Outcome], width: int = 640, height: int = 320) -> str:
    """Each arm's mean of its sessions' step curves on a common grid of compute seconds."""
    points = [p for o in outcomes for p in o.curve]
    if not points:
        return "<p>no curves</p>"
    x_max = max(p[0] for p in points) or 1.0
    grid = [x_max * i / 60 for i in range(61)]
    lines = {}
    for s in summaries:
        mine = [o.curve for o in outcomes if o.arm == s.arm and o.curve]
        if mine:
            lines[s.arm] = [statistics.fmean(_at(c, x) for c in mine) for x in grid]
    ys = [y for line in lines.values() for y in line] + [0.0]
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or 1.0

    def xy(x: float, y: float) -> str:
        return f"{40 + (width - 50) * x / x_max:.1f},{height - 30 - (height - 40) * (y - lo) / span:.1f}"

    paths = "".join(f'<polyline fill="none" stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="2" '
                    f'points="{" ".join(xy(x, y) for x, y in zip(grid, line))}"><title>{html.escape(arm)}</title>'
                    f"</polyline>" for i, (arm, line) in enumerate(lines.items()))
    legend = "".join(f'<text x="{50 + 120 * i}" y="14" fill="{COLOURS[i % len(COLOURS)]}">{html.escape(arm)}</text>'
                     for i, arm in enumerate(lines))
    axes = (f'<line x1="40" y1="{height - 30}" x2="{width - 10}" y2="{height - 30}" stroke="gray"/>'
            f'<text x="{width - 10}" y="{height - 12}" text-anchor="end">{x_max:.0f} s of runs</text>'
            f'<text x="36" y="{height - 30}" text-anchor="end">{lo:.3g}</text>'
            f'<text x="36" y="24" text-anchor="end">{hi:.3g}</text>')
    return (f'<svg id="curves" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-size="12">{axes}{paths}{legend}</svg>')


def _at(curve: list[list[float]], x: float) -> float:
    """A session's in-loop gain once `x` seconds were spent (its last value past its end)."""
    value = 0.0
    for spent, gain in curve:
        if spent > x:
            break
        value = gain
    return value
