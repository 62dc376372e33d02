"""Reports end to end: a real run regenerates report.html and progress.png as it goes; `nightlab report`;
what the page holds; the chart's edge cases; a missing matplotlib; a missing MLflow extra
(MLflow itself: test_mlflow.py)."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nightlab import views
from nightlab.config import Config
from nightlab.ledger import TrialRecord
from nightlab.report import chart
from nightlab.report.data import ReportData
from nightlab.types import Metric
from nlkit import CLI, TRAIN, Project, content, idea, make_project, one_line_error, sub

PNG = b"\x89PNG\r\n\x1a\n"
XSS = "<script>alert('owned')</script> & raise BONUS"
# Each run sleeps a little so the report can be watched changing while the run goes on.
SLOW_TRAIN = TRAIN.replace("NOISE = 0.0", "NOISE = 0.002").replace("seed = int",
                                                                  "import time\ntime.sleep(0.3)\nseed = int")
IDEAS = [
    idea("raise LR to 0.3", sub("LR = 0.1", "LR = 0.3"), hypothesis="the LR is too low"),  # 1 keep
    idea("lower LR to 0.0", sub("LR = 0.3", "LR = 0.0")),  # 2 discard
    idea("exit with code 3", sub("seed = int", "raise SystemExit(3)\nseed = int")),  # 3 crash
    idea("edit the evaluation", sub("prepared", "tampered", file="prepare.py")),  # 4 rejected
    idea(XSS, sub("BONUS = 0.0", "BONUS = 0.05"),
         content("# Scratchpad\n\nBONUS <helps> a lot\n", file="scratchpad.md")),  # 5 keep
]
STATUSES = ["baseline", "keep", "discard", "crash", "rejected", "keep"]


@dataclass
class Reported:
    proj: Project
    stdout: str
    stderr: str
    seen: list[int]  # the trial counts report.html showed while the run was still going

    @property
    def html(self) -> str:
        return (self.proj.state() / "report.html").read_text()


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Reported:
    proj = make_project(tmp_path_factory.mktemp("report"), train=SLOW_TRAIN, ideas=IDEAS,
                        config={"keep": {"noise_runs": 3}, "phases": {"trials": 2}})
    proc = subprocess.Popen([*CLI, "run", "--tag", "t"], cwd=proj.dir, env=proj.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    report, seen = proj.state() / "report.html", []
    while proc.poll() is None:
        if report.exists():
            found = re.search(r'data-trials="(\d+)"', report.read_text())
            assert found, "a reader saw a half-written report"
            if not seen or seen[-1] != int(found.group(1)):
                seen.append(int(found.group(1)))
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    return Reported(proj, out, err, seen)


def test_the_report_is_regenerated_during_the_run(reported: Reported) -> None:
    assert [r["status"] for r in reported.proj.ledger()] == STATUSES
    assert reported.seen and reported.seen[0] < len(STATUSES), reported.seen  # written while the run went on
    assert reported.seen == sorted(reported.seen)
    assert f'data-trials="{len(STATUSES)}"' in reported.html  # and the last one has every trial
    state = reported.proj.state()
    assert not [p.name for p in state.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave nothing behind
    assert "report:  .nightlab/t/report.html" in reported.stdout  # relative: the run is in the project
    assert "WARNING" not in reported.stderr.replace("WARNING: sandbox 'process'", "")


def test_the_run_prints_one_plain_line_per_event_without_a_terminal(reported: Reported) -> None:
    lines = reported.stdout.splitlines()
    assert "nightlab run · t" not in reported.stdout and "\x1b[" not in reported.stdout  # no live panel in a log
    for n, status in enumerate(STATUSES):
        assert sum(bool(re.match(rf"trial +{n} +{status} ", line)) for line in lines) == 1, reported.stdout
    assert sum(line.startswith("trial 3: running") for line in lines) == 1


def test_the_page_holds_the_summary_the_table_the_diffs_and_the_scratchpad(reported: Reported) -> None:
    page, ledger = reported.html, reported.proj.ledger()
    status = reported.proj.status_json()
    assert len(re.findall(r'<tr class="trial ', page)) == len(STATUSES)
    for r in ledger:
        assert f'data-n="{r["n"]}"' in page
    cards = re.search(r'<div class="cards" id="summary">(.*?)</div></div>', page, re.S).group(0)
    for value in (f"<b>{status['trials']}</b>", f"<b>{status['kept']}</b>", views.fmt(status["baseline"]),
                  views.fmt(status["best"]), views.fmt(status["delta"], True), views.fmt(status["noise"])):
        assert value in cards
    assert f"{100 * status['delta'] / status['baseline']:+.1f}%" in cards
    # every trial after the baseline has its diff, expandable
    assert page.count("<details><summary>diff</summary>") == len(STATUSES) - 1
    assert "LR = 0.3</span>" in page and "tampered" in page  # the rejected attempt's diff is on record too
    # the scratchpad as it is at the branch tip, escaped
    assert "BONUS &lt;helps&gt; a lot" in page
    # both phases, and the phase summary
    assert re.search(r'<table id="phases">.*1 Hyperparameters.*2 Architecture', page, re.S)
    assert "Verify" not in page  # this ledger has no verify results


def test_agent_text_is_escaped_and_nothing_is_fetched(reported: Reported) -> None:
    page = reported.html
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt; &amp; raise" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # self-contained: no network
    assert "<link" not in page and "@import" not in page
    assert page.count("data:image/png;base64,") == 2  # the chart, light and dark


def test_the_charts_are_pngs(reported: Reported) -> None:
    light = (reported.proj.state() / "progress.png").read_bytes()
    dark = (reported.proj.state() / "progress-dark.png").read_bytes()
    assert light.startswith(PNG) and dark.startswith(PNG) and light != dark
    import matplotlib.image as mpimg

    img = mpimg.imread(reported.proj.state() / "progress.png")
    assert img.shape[1] == 1100 and img.shape[0] > 400
    assert img[5, 5, :3].mean() > 0.9 and mpimg.imread(reported.proj.state() / "progress-dark.png")[5, 5, :3].mean() < 0.2


def test_report_command_rewrites_the_report(reported: Reported) -> None:
    state = reported.proj.state()
    (state / "report.html").unlink()
    (state / "progress.png").unlink()
    proc = reported.proj.nl("report", "--tag", "t")
    assert proc.returncode == 0, proc.stderr
    assert "report: .nightlab/t/report.html" in proc.stdout
    assert (state / "progress.png").read_bytes().startswith(PNG)
    assert f'data-trials="{len(STATUSES)}"' in (state / "report.html").read_text()
    assert reported.proj.nl("report").returncode == 0  # the default tag is the latest one
    assert "no-such-tag" in one_line_error(reported.proj.nl("report", "--tag", "no-such-tag"))


def test_verify_results_are_shown_when_the_ledger_has_them(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=[idea("raise LR to 0.3", sub("LR = 0.1", "LR = 0.3")),
                                         idea("add a bonus", sub("BONUS = 0.0", "BONUS = 0.01"))])
    proj.run("--max-trials", "2")
    assert "Verify" not in (proj.state() / "report.html").read_text()  # an empty verify table shows nothing
    verify = proj.nl("verify", "--tag", "t", "--seeds", "2", "--ablate")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    db = sqlite3.connect(proj.state() / "ledger.sqlite")
    with db:  # a table this report does not know is still shown, as stored and escaped
        db.execute("CREATE TABLE verify_extra (check_name TEXT, value REAL)")
        db.execute("INSERT INTO verify_extra VALUES ('<b>held-out</b>', 0.5)")
    db.close()
    assert proj.nl("report", "--tag", "t").returncode == 0
    page = (proj.state() / "report.html").read_text()
    section = page[page.index("<h2>Verify</h2>"):page.index("<h2>Trials</h2>")]
    known = section[:section.index("<h3>verify_extra</h3>")]
    assert "nightlab verify #1" in known
    rows = re.findall(r"<tr><td>(\w+)</td><td>([^<]*)</td>", known)
    assert [kind for kind, _ in rows] == ["val", "ablate", "ablate"], rows
    assert "val_loss: best vs baseline" in rows[0][1]
    assert "<td>1.04 ± 0</td><td>0.99 ± 0</td><td>+0.05 [" in known  # best vs baseline: mean ± sd, effect [CI]
    assert "&lt;b&gt;held-out&lt;/b&gt;" in section and "<b>held-out" not in section


# -- a real browser ------------------------------------------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    """Debian's chromium (`make test` installs it as root). CI must have it; elsewhere the test may skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI: `make test` installs it with apt-get (as root)")
    pytest.skip("chromium is not installed and this is not CI (as root, `make test` installs it)")


def _browser(args: list[str], tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{name}"  # a new empty profile each time: no state from other runs
    proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_a_browser_shows_the_chart_and_one_row_per_trial(reported: Reported, tmp_path: Path) -> None:
    url = (reported.proj.state() / "report.html").as_uri()
    dom = _browser(["--dump-dom", url], tmp_path, "dom").stdout
    rows = re.findall(r'<tr class="trial [^"]*" data-n="(\d+)"', dom)
    assert [int(n) for n in rows] == list(range(len(STATUSES)))
    chart_tag = re.search(r'<img[^>]*id="chart"[^>]*>', dom).group(0)
    assert 'data-loaded="1100"' in chart_tag  # the browser decoded the inlined PNG: 1100 px wide
    shot = tmp_path / "report.png"
    _browser([f"--screenshot={shot}", "--window-size=1280,1600", url], tmp_path, "shot")
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[:, :, :3]
    assert img.shape[:2] == (1600, 1280)
    colors = {tuple(c) for c in (img[::4, ::4] * 255).astype(int).reshape(-1, 3)}
    assert len(colors) > 200  # text, a chart and a table; a blank or error page has a handful


# -- the chart's edge cases, drawn in-process from real trial records -----------------------------------
def _data(trials: list[TrialRecord], goal: str = "minimize", noise: float | None = None) -> ReportData:
    cfg = Config()
    cfg.metric.goal = goal
    summary = views.status_json(cfg, "edge", trials, noise, "nightlab/edge")
    return ReportData(tag="edge", metric=Metric("val_bpb", goal), trials=trials, noise=noise, summary=summary,
                      hours=0.0)


def _rec(n: int, status: str, metric: float | None = None, phase: str = "", description: str = "") -> TrialRecord:
    return TrialRecord(n=n, status=status, metric=metric, phase=phase, description=description or f"idea {n}")


EDGES = {
    "a single trial": [_rec(0, "baseline", 1.0)],
    "only crashes after the baseline": [_rec(0, "baseline", 1.0), _rec(1, "crash"), _rec(2, "timeout")],
    "no metric at all": [_rec(0, "crash")],
    "an outlier far off the chart": [_rec(0, "baseline", 1.0), _rec(1, "discard", 1e6), _rec(2, "keep", 0.9)],
    "maximize with phases": [_rec(0, "baseline", 0.5, "1 A"), _rec(1, "keep", 0.6, "1 A", "x" * 200),
                             _rec(2, "discard", 0.55, "2 B"), _rec(3, "keep", 0.7, "2 B")],
}


@pytest.mark.parametrize("case", list(EDGES))
def test_chart_edge_cases(case: str) -> None:
    goal = "maximize" if case.startswith("maximize") else "minimize"
    for dark in (False, True):
        png = chart.png(_data(EDGES[case], goal, noise=0.01), dark=dark)
        assert png.startswith(PNG) and len(png) > 10_000


# -- without matplotlib, and MLflow --------------------------------------------------------------------------
def _blocked(tmp_path: Path, module: str) -> str:
    """A directory that shadows `module` with one that fails to import, as if it were not installed."""
    block = tmp_path / "block"
    (block / module).mkdir(parents=True)
    (block / module / "__init__.py").write_text(f"raise ImportError('{module} is blocked for this test')\n")
    return str(block)


def test_without_matplotlib_the_run_writes_the_report_without_a_chart(tmp_path: Path) -> None:
    proj = make_project(tmp_path, ideas=IDEAS[:2])
    proj.extra_env["PYTHONPATH"] = _blocked(tmp_path, "matplotlib")
    proc = proj.run()
    warnings = [line for line in proc.stderr.splitlines() if "chart" in line]
    assert len(warnings) == 1 and "nightlab[report]" in warnings[0], proc.stderr
    page = (proj.state() / "report.html").read_text()
    assert 'id="no-chart"' in page and "base64" not in page
    assert len(re.findall(r'<tr class="trial ', page)) == 3
    assert not (proj.state() / "progress.png").exists()


def test_mlflow_needs_its_extra(tmp_path: Path) -> None:
    proj = make_project(tmp_path, config={"report": {"mlflow": True}})
    proj.extra_env["PYTHONPATH"] = _blocked(tmp_path, "mlflow")
    assert "nightlab[mlflow]" in one_line_error(proj.run("--max-trials", "1", ok=False))
