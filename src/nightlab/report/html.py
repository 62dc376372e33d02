"""report.html: one self-contained page (inline CSS, the chart inlined as base64, no network).

Everything that came from an agent, a run or the ledger goes through `esc`: a description or a diff
is untrusted text.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Sequence

from nightlab import __version__
from nightlab.ledger import TrialRecord
from nightlab.report.data import ReportData, VerifyTable

CSS = """
:root { --bg:#ffffff; --fg:#24292f; --muted:#57606a; --line:#d0d7de; --panel:#f6f8fa;
  --keep:#1a7f37; --base:#2166ac; --bad:#cf222e; --warn:#9a6700; --add:#dafbe1; --del:#ffebe9; }
@media (prefers-color-scheme: dark) {
  :root { --bg:#0d1117; --fg:#c9d1d9; --muted:#8b949e; --line:#30363d; --panel:#161b22;
    --keep:#3fb950; --base:#58a6ff; --bad:#f85149; --warn:#d29922; --add:#12261e; --del:#2d1215; } }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1180px; padding: 24px; background: var(--bg); color: var(--fg);
  font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: var(--muted); margin-bottom: 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px;
  min-width: 130px; }
.card b { display: block; font-size: 18px; } .card span { color: var(--muted); font-size: 12px; }
img.chart { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--panel); } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.audit { color: var(--warn); } .st-held { color: var(--warn); }
.st { font-weight: 600; } .st-keep { color: var(--keep); } .st-baseline { color: var(--base); }
.st-discard, .st-lost { color: var(--muted); } .st-crash, .st-timeout { color: var(--bad); }
.st-rejected, .st-invalid { color: var(--warn); }
td.phase { white-space: nowrap; }
tr.keep td { background: color-mix(in srgb, var(--keep) 8%, transparent); }
.reason { color: var(--muted); }
details summary { cursor: pointer; color: var(--muted); font-size: 12px; }
pre { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px; overflow-x: auto;
  font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre; }
pre.scratch { white-space: pre-wrap; }
.add { background: var(--add); display: block; } .del { background: var(--del); display: block; }
.hunk { color: var(--base); display: block; }
footer { color: var(--muted); font-size: 12px; margin-top: 32px; }
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def num(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.5g}" if sign else f"{v:.6g}"


def render(data: ReportData, chart: bytes | None, dark_chart: bytes | None, note: str = "") -> str:
    """The whole page. `chart` is None when it could not be drawn (`note` then says why)."""
    parts = [_head(data), _summary(data), _chart(chart, dark_chart, note), _phases(data), _verify(data.verify),
             _slots(data.slots),
             _trials(data), _scratchpad(data),
             f"<footer>nightlab {esc(__version__)} · written {esc(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}"
             f" · ledger <code>.nightlab/{esc(data.tag)}/ledger.sqlite</code></footer>",
             "</body></html>\n"]
    return "\n".join(p for p in parts if p)


def _head(data: ReportData) -> str:
    s = data.summary
    live = f" · trial {esc(', '.join(map(str, data.running)))} running" if data.running else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="color-scheme" content="light dark">'
            f"<title>nightlab · {esc(data.tag)}</title><style>{CSS}</style></head>\n"
            f'<body data-trials="{len(data.trials)}">\n<h1>nightlab report · {esc(data.tag)}</h1>'
            f'<div class="sub">branch <code>{esc(s["branch"])}</code> · {esc(s["metric_name"])}, '
            f"{esc(s['goal'])}{live}</div>")


def _summary(data: ReportData) -> str:
    s = data.summary
    pct = ""
    if s["delta"] is not None and s["baseline"]:
        pct = f"{100 * s['delta'] / abs(s['baseline']):+.1f}%"
    cards = [("trials", str(s["trials"]), "after the baseline"), ("kept", str(s["kept"]), "real improvements"),
             ("baseline → best", f"{num(s['baseline'])} → {num(s['best'])}",
              f"best: trial {s['best_trial']}" if s["best_trial"] is not None else ""),
             ("delta", num(s["delta"], True), pct),
             ("noise", "deterministic" if s.get("deterministic") else num(data.noise), "σ of the baseline's seeds"),
             *([("evaluation σ", num(s["eval_se"]), f"{s['examples']} examples, paired")] if s.get("examples") else []),
             ("hours", f"{data.hours:.2f}", f"{s['seconds'] / 3600:.2f} h of runs, "
                                            f"{s['agent_seconds'] / 3600:.2f} h of the agent"),
             ("cost", f"${s['cost_usd']:.2f}", "agent spend")]
    body = "".join(f'<div class="card"><span>{esc(k)}</span><b>{esc(v)}</b><span>{esc(why)}</span></div>'
                   for k, v, why in cards)
    rule = s.get("keep_rule")
    warn = rule and "no noise measured" in rule
    note = f'<p class="{"reason" if warn else "sub"}" id="keep-rule">keep rule: {esc(rule)}</p>' if rule else ""
    return f'<h2>Summary</h2><div class="cards" id="summary">{body}</div>{note}'


def _chart(chart: bytes | None, dark_chart: bytes | None, note: str) -> str:
    if chart is None:
        return f'<h2>Progress</h2><p class="reason" id="no-chart">no chart: {esc(note)}</p>'
    light = base64.b64encode(chart).decode()
    dark = ""
    if dark_chart:
        dark = (f'<source media="(prefers-color-scheme: dark)" '
                f'srcset="data:image/png;base64,{base64.b64encode(dark_chart).decode()}">')
    # onload records that the browser decoded the image (the browser test reads it back from the DOM)
    return (f"<h2>Progress</h2><picture>{dark}<img class=\"chart\" id=\"chart\" alt=\"progress chart\" "
            f"onload=\"this.dataset.loaded=this.naturalWidth\" src=\"data:image/png;base64,{light}\"></picture>")


def _phases(data: ReportData) -> str:
    phases = data.phases()
    if len(phases) <= 1 and phases and phases[0].label == "—":
        return ""
    rows = []
    for p in phases:
        gain = (p.end - p.start) if p.start is not None and p.end is not None else None
        rows.append(f"<tr><td>{esc(p.label)}</td><td class=num>{p.trials}</td><td class=num>{p.kept}</td>"
                    f"<td class=num>{p.failed}</td><td class=num>{esc(num(p.start))} → {esc(num(p.end))}</td>"
                    f"<td class=num>{esc(num(gain, True) if gain else '0')}</td></tr>")
    return ("<h2>Phases</h2><table id=\"phases\"><thead><tr><th>phase</th><th>trials</th><th>kept</th>"
            "<th>failed</th><th>best at start → end</th><th>change</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _verify(tables: list[VerifyTable]) -> str:
    if not tables:
        return ""
    return "<h2>Verify</h2>" + "".join(f"<h3>{esc(t.name)}</h3>{_table(t.columns, t.rows)}" for t in tables)


def _slots(slots: list[dict]) -> str:
    if not slots:
        return ""
    rows = [[s["slot"], f"trial {s['trial']} run {s['run']}" if s["trial"] is not None else "idle", s["runs"],
             s["lost"], _duration(s["busy_s"]), f"{100 * s['busy']:.0f}%" if s["busy"] is not None else "—",
             s["hardware"]] for s in slots]
    return ("<h2>Slots</h2><p>Runs in parallel: busy is the share of time since the slot's first run that it was "
            "training.</p>" + _table(["slot", "now", "runs", "lost", "training", "busy", "hardware"], rows))


def _table(columns: list[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="verify"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


def _trials(data: ReportData) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("n", "status", esc(data.metric.name), "delta", "description", "phase",
                                            "duration", "agent", "cost"))
    rows = "".join(_row(t, data.diffs.get(t.n, "")) for t in data.trials)
    return (f'<h2>Trials</h2><table id="trials"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def _row(t: TrialRecord, diff: str) -> str:
    desc = esc(t.description)
    if t.reason:
        desc += f' <span class="reason">[{esc(t.reason)}]</span>'
    if t.hypothesis:
        desc += f'<br><span class="reason">{esc(t.hypothesis)}</span>'
    if t.findings:  # the audit's findings, next to the keep (or discard) they are about
        items = "".join(f"<li>{esc(f['check'])}: {esc(f['reason'])}"
                        f"{esc(' (' + f['file'] + ':' + ','.join(map(str, f['lines'])) + ')') if f['lines'] else ''}"
                        f"</li>" for f in t.findings)
        desc += f'<div class="audit" data-audit="{esc(t.audit)}">audit: {esc(t.audit)}<ul>{items}</ul></div>'
    if diff.strip():
        desc += f"<details><summary>diff</summary><pre class=\"diff\">{_diff_html(diff)}</pre></details>"
    runs = f" title=\"runs: {esc(', '.join(f'{r:.6g}' for r in t.runs))}\"" if len(t.runs) > 1 else ""
    return (f'<tr class="trial {esc(t.status)}" data-n="{t.n}"><td class=num>{t.n}</td>'
            f'<td class="st st-{esc(t.status)}">{esc(t.status)}</td><td class=num{runs}>{esc(num(t.metric))}</td>'
            f"<td class=num>{esc(num(t.delta, True))}</td><td>{desc}</td><td class=phase>{esc(t.phase)}</td>"
            f"<td class=num>{_duration(t.seconds)}</td>"
            f"<td class=num title=\"{esc(t.agent)}\">{_duration(t.agent_seconds) if t.agent_seconds else ''}</td>"
            f"<td class=num>{f'${t.cost_usd:.2f}' if t.cost_usd else ''}</td></tr>")


def _diff_html(diff: str) -> str:
    lines = []
    for line in diff.splitlines():
        cls = "add" if line.startswith("+") and not line.startswith("+++") else \
            "del" if line.startswith("-") and not line.startswith("---") else "hunk" if line.startswith("@@") else ""
        lines.append(f'<span class="{cls}">{esc(line)}</span>' if cls else esc(line) + "\n")
    return "".join(lines)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


def _scratchpad(data: ReportData) -> str:
    if not data.scratchpad.strip():
        return ""
    return (f"<h2>Scratchpad <small>({esc(data.scratchpad_name)} at the branch tip)</small></h2>"
            f'<pre class="scratch" id="scratchpad">{esc(data.scratchpad)}</pre>')
