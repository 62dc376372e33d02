"""What nightlab prints fits the terminal it runs in, 80 to 200 columns: `status` (summary, trials, slots and
verify tables), `log`, and `run` with its live panel and end-of-run summary, each on a real pseudo-terminal of
that size (no COLUMNS: the terminal's own size counts, as in tmux); long text is cut inside its cell."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from nightlab.config import Config
from nightlab.ledger import TrialRecord
from nightlab.report.live import LiveView
from nlkit import CLI, PROGRAM, Project, idea, in_pty, make_project, screen_lines, sub

WIDTHS = [80, 100, 130, 200]
LONG = ("raise the learning rate to 0.3 and, while at it, rewrite the warmup schedule so that it ramps up over the "
        "first tenth of the budget before a cosine decay")
PHASE = "Hyperparameters of the optimizer and the learning-rate schedule"
IDEAS = [
    idea(LONG, sub("LR = 0.1", "LR = 0.3")),  # keep
    idea("lower LR to 0.0 " * 8, sub("LR = 0.3", "LR = 0.0")),  # discard
    idea("exit with code 3 after a long and winding preamble " * 3,
         sub("seed = int", "raise SystemExit(3)\nseed = int")),  # crash
    idea("a search text that is not there at all " * 3, sub("no such text in train.py " * 4, "x")),  # rejected
]
LEFT, RIGHT = "┏┃┡│└╭╰", "┓┃┩│┘╮╯"


def _env(proj: Project) -> dict[str, str]:
    env = {k: v for k, v in proj.env.items() if k not in ("COLUMNS", "LINES")}
    return env | {"TERM": "xterm-256color"}


def _assert_fits(raw: str, width: int, whole_after: str = "") -> list[str]:
    """Every line within `width`, and every bordered line (after the first line holding `whole_after`) whole: a
    table line that starts with a border ends with one (rich crops what is too wide at the terminal's edge,
    which would hide an overflow). The live panel, redrawn several times a second while other threads print,
    is checked whole in test_the_live_panel_fits_the_console: under heavy load the stream read from the pty was
    seen to lack the tail of one redraw, cut inside a UTF-8 character (below rich, which writes whole text)."""
    lines = screen_lines(raw)
    wide = [f"{cell_len(line)}: {line}" for line in lines if cell_len(line) > width]
    assert not wide, f"{len(wide)} lines wider than {width} columns:\n" + "\n".join(wide)
    start = next(i for i, line in enumerate(lines) if whole_after in line)
    cut = [line for line in lines[start:] if line[:1] in LEFT and line.rstrip()[-1:] not in RIGHT]
    assert not cut, "table lines without their right border:\n" + "\n".join(cut)
    return lines


def _trial_rows(lines: list[str]) -> list[int]:
    """The trial numbers of the trials table's rows, in order."""
    rows = [re.match(r"│ +(\d+) │ +(baseline|keep|discard|crash|rejected|invalid) +│", line) for line in lines]
    return [int(m[1]) for m in rows if m]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A tag with long descriptions, reasons and phase title, run on two slots and verified, so that `status`
    shows every table it has."""
    proj = make_project(tmp_path_factory.mktemp("width"), ideas=IDEAS,
                        files={"program.md": PROGRAM.replace("Hyperparameters", PHASE)})
    proj.run("--max-trials", str(len(IDEAS)), "--slots", "2", timeout=120)
    proc = proj.nl("verify", "--tag", "t", "--seeds", "2", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proj


@pytest.mark.parametrize("width", WIDTHS)
def test_status_fits_the_terminal(project: Project, width: int) -> None:
    code, raw = in_pty([*CLI, "status", "--tag", "t"], project.dir, _env(project), columns=width)
    assert code == 0, raw
    lines = _assert_fits(raw, width)
    text = "\n".join(lines)
    for title in ("last 10 trials", "slots", "last verify"):  # every table status has, drawn
        assert title in text, text
    assert _trial_rows(lines) == list(range(len(IDEAS) + 1)), text
    assert "raise the" in text and "…" in text  # the long description is there, cut in its cell


@pytest.mark.parametrize("width", WIDTHS)
def test_log_fits_the_terminal(project: Project, width: int) -> None:
    code, raw = in_pty([*CLI, "log", "--tag", "t"], project.dir, _env(project), columns=width)
    assert code == 0, raw
    lines = _assert_fits(raw, width)
    assert _trial_rows(lines) == list(range(len(IDEAS) + 1)), "\n".join(lines)
    assert any(line.startswith("└") for line in lines)  # the table closes on its own line, inside the width


@pytest.mark.parametrize("width", [80, 130])
def test_a_run_and_its_end_of_run_summary_fit_the_terminal(project: Project, width: int) -> None:
    tag = f"w{width}"
    code, raw = in_pty([*CLI, "run", "--tag", tag, "--max-trials", str(len(IDEAS))], project.dir,
                       _env(project), columns=width, timeout=120)
    assert code == 0, raw
    lines = _assert_fits(raw, width, whole_after="last 10 trials")  # the end-of-run summary, drawn once
    text = "\n".join(lines)
    assert f"nightlab run · {tag}" in text  # the live panel was drawn, at this width
    assert "last 10 trials" in text and f"stopped: reached --max-trials {len(IDEAS)}" in text
    assert f"results: .nightlab/{tag}/results.tsv" in text


@pytest.mark.parametrize("width", WIDTHS)
def test_the_live_panel_fits_the_console(tmp_path: Path, width: int) -> None:
    cfg = Config(path=tmp_path / "nightlab.toml")
    view = LiveView(cfg, "a-rather-long-tag-name-for-tonight", Console(file=io.StringIO()), lambda e, r: None,
                    max_trials=100, hours=8)
    view.terminal = True  # drawn below, not started: the panel is what is measured
    view("done", TrialRecord(n=0, status="baseline", metric=1.0, phase=f"1 {PHASE}"))
    for n in range(1, 30):
        view("done", TrialRecord(n=n, status="discard", metric=1.1, delta=0.1, description=LONG))
    view("run", TrialRecord(n=30, description=LONG, phase=f"1 {PHASE}"))
    out = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    out.print(view, crop=False)  # as drawn, not cut at the console's edge
    lines = out.export_text().splitlines()
    assert lines and all(cell_len(line) <= width for line in lines), "\n".join(lines)
    assert all(line[:1] in LEFT and line.rstrip()[-1:] in RIGHT for line in lines), "\n".join(lines)
    assert lines[0].startswith("╭") and lines[-1].startswith("╰") and "raise the" in "\n".join(lines)
