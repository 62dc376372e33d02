"""progress.png: every trial's metric, the running best as a step line, phases, the noise band.

matplotlib is an optional extra; it is imported here only, and only when a chart is drawn. The
object API (Figure + Agg canvas, no pyplot) keeps no global state, so a chart can be drawn on a
background thread while the loop goes on.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from nightlab.agents import require
from nightlab.report.data import FAILED, ReportData

LABEL = 42  # characters of a kept trial's description shown on the chart


@dataclass(frozen=True)
class Theme:
    background: str
    text: str
    grid: str
    bands: tuple[str, str]
    baseline: str
    keep: str
    discard: str
    failed: str


LIGHT = Theme("#ffffff", "#24292f", "#d8dee4", ("#f3f4f6", "#ffffff"), "#2166ac", "#1a7f37", "#8c959f", "#cf222e")
DARK = Theme("#0d1117", "#c9d1d9", "#30363d", ("#161b22", "#0d1117"), "#58a6ff", "#3fb950", "#6e7681", "#f85149")


def png(data: ReportData, dark: bool = False) -> bytes:
    """The chart as PNG bytes (raises UsageError naming the extra when matplotlib is missing)."""
    require("matplotlib", "report")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    theme = DARK if dark else LIGHT
    fig = Figure(figsize=(11, 5.2), dpi=100, facecolor=theme.background)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _style(ax, theme)
    points = [t for t in data.trials if t.metric is not None]
    if not points:
        ax.text(0.5, 0.5, "no results yet", transform=ax.transAxes, ha="center", va="center", color=theme.text)
    else:
        _draw(ax, data, theme)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", facecolor=theme.background)
    return out.getvalue()


def _style(ax, theme: Theme) -> None:
    ax.set_facecolor(theme.background)
    for spine in ax.spines.values():
        spine.set_color(theme.grid)
    ax.tick_params(colors=theme.text, labelsize=9)
    ax.grid(True, color=theme.grid, linewidth=0.6, alpha=0.7)
    ax.set_axisbelow(True)


def _limits(data: ReportData) -> tuple[float, float]:
    """A y range that shows the progress: values far worse than the baseline are clipped to the edge."""
    path = [v for _, v in data.best_path()]
    values = [v for t in data.trials if (v := t.metric) is not None]
    base = path[0] if path else values[0]
    found = data.metric.best_of(path)
    best = found if found is not None else base
    span = abs(base - best) or (data.noise or 0) * 4 or abs(base) * 0.05 or 1.0
    lo, hi = min(values + [best, base]), max(values + [best, base])
    if data.metric.goal == "minimize":
        hi = min(hi, base + 1.5 * span)
    else:
        lo = max(lo, base - 1.5 * span)
    pad = 0.12 * ((hi - lo) or span)
    return lo - pad, hi + pad


def _draw(ax, data: ReportData, theme: Theme) -> None:
    lo, hi = _limits(data)
    last = data.trials[-1].n
    _phase_bands(ax, data, theme)
    # the running best: a step line from the baseline through every keep, to the last trial
    path = data.best_path()
    xs = [n for n, _ in path] + [last]
    ys = [v for _, v in path] + [path[-1][1]] if path else []
    if path:
        if data.noise:
            ax.fill_between(xs, [y - data.noise for y in ys], [y + data.noise for y in ys], step="post",
                            color=theme.keep, alpha=0.13, linewidth=0, label=f"best ± noise ({data.noise:.3g})")
        ax.step(xs, ys, where="post", color=theme.keep, linewidth=2, label="running best")
    shown = {t.n: v for t in data.trials if t.status == "discard" and (v := t.metric) is not None}
    inside = {n: v for n, v in shown.items() if lo <= v <= hi}
    ax.scatter(list(inside), list(inside.values()), s=22, color=theme.discard, alpha=0.55,
               linewidths=0, label="discarded")
    outside = [n for n, v in shown.items() if not lo <= v <= hi]
    if outside:  # far worse than the baseline: an arrowhead at the edge instead of squashing the chart
        edge = hi - 0.03 * (hi - lo) if data.metric.goal == "minimize" else lo + 0.03 * (hi - lo)
        ax.scatter(outside, [edge] * len(outside), s=30, color=theme.discard, alpha=0.55,
                   marker="^" if data.metric.goal == "minimize" else "v", linewidths=0, label="off the chart")
    failed = [t.n for t in data.trials if t.status in FAILED]
    if failed:
        # failures have no metric: a faint rug along the bottom edge keeps them visible
        ax.scatter(failed, [0.03] * len(failed), transform=ax.get_xaxis_transform(), marker="x", s=22,
                   color=theme.failed, alpha=0.55, linewidths=1.2, label="crash / no metric")
    base = [t for t in data.trials if t.status == "baseline" and t.metric is not None]
    ax.scatter([t.n for t in base], [t.metric for t in base], s=70, color=theme.baseline, zorder=4,
               edgecolors=theme.background, label="baseline")
    kept = [t for t in data.trials if t.status == "keep" and t.metric is not None]
    ax.scatter([t.n for t in kept], [t.metric for t in kept], s=70, color=theme.keep, zorder=4,
               edgecolors=theme.background, label="kept")
    for i, t in enumerate(kept):
        text = t.description if len(t.description) <= LABEL else t.description[:LABEL - 1] + "…"
        right = t.n > 0.7 * max(last, 1)  # late keeps are labelled to their left, so the label stays inside
        ax.annotate(text, (t.n, t.metric), xytext=(-6 if right else 6, 8 + 9 * (i % 3)), textcoords="offset points",
                    fontsize=7.5, color=theme.text, rotation=18, ha="right" if right else "left",
                    rotation_mode="anchor", clip_on=True)
    ax.set_xlim(-0.6, max(last, 1) + 0.6)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("trial", color=theme.text)
    better = "lower" if data.metric.goal == "minimize" else "higher"
    ax.set_ylabel(f"{data.metric.name} ({better} is better)", color=theme.text)
    ax.set_title(_title(data), color=theme.text, fontsize=11, loc="left")
    legend = ax.legend(loc="upper right" if data.metric.goal == "minimize" else "lower right", fontsize=8,
                       facecolor=theme.background, edgecolor=theme.grid, framealpha=0.85)
    for text in legend.get_texts():
        text.set_color(theme.text)


def _phase_bands(ax, data: ReportData, theme: Theme) -> None:
    """Shade each run of consecutive trials of one phase and label it along the top."""
    spans: list[list] = []
    for t in data.trials:
        if spans and spans[-1][0] == t.phase:
            spans[-1][2] = t.n
        else:
            spans.append([t.phase, t.n, t.n])
    if len(spans) == 1 and not spans[0][0]:
        return
    for i, (label, first, last) in enumerate(spans):
        ax.axvspan(first - 0.5, last + 0.5, color=theme.bands[i % 2], zorder=0, linewidth=0)
        if label:
            ax.text(first - 0.4, 0.985, f"Phase {label}", transform=ax.get_xaxis_transform(), va="top",
                    fontsize=7.5, color=theme.text, alpha=0.8, clip_on=True)


def _title(data: ReportData) -> str:
    s = data.summary
    title = f"{data.tag} · {data.metric.name}"
    if s["baseline"] is not None and s["best"] is not None:
        title += f": {s['baseline']:.5g} → {s['best']:.5g}"
        if s["baseline"]:
            title += f" ({100 * (s['best'] - s['baseline']) / abs(s['baseline']):+.1f}%)"
    return f"{title} · {s['trials']} trials, {s['kept']} kept"
