"""The quick path of the `nightlab` command (entry.py): `--version`, `status` and `log` answered without typer,
pydantic or rich say what the full CLI says, on a ledger made by a real `nightlab run`: the same `--json` text, the
same rows in the tables; the config is still checked, and anything else goes to the full CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nightlab.entry import parse
from nightlab.plain_table import Column, Style, cell_len, table
from nlkit import CLI, FULL_CLI, Project, idea, in_pty, make_project, one_line_error, sub

IDEAS = [
    idea("raise LR to 0.3", sub("LR = 0.1", "LR = 0.3")),  # keep
    idea("lower LR to 0.0, a change with a long description that a narrow table cuts", sub("LR = 0.3", "LR = 0.0")),
    idea("exit with code 3", sub("seed = int", "raise SystemExit(3)\nseed = int")),  # crash
    idea("a search text that is not there", sub("no such text in train.py", "x")),  # rejected
]
HEAVY = ("typer", "click", "pydantic", "rich")


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A tag run on two slots, so that `status` shows its slots table too."""
    proj = make_project(tmp_path_factory.mktemp("quick"), ideas=IDEAS)
    proj.run("--max-trials", str(len(IDEAS)), "--slots", "2", timeout=120)
    return proj


def _nl(proj: Project, cli: list[str], *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([*cli, *args], cwd=proj.dir, env=proj.env | (env or {}), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("args", [["--version"], ["status", "--json"], ["log", "--json"],
                                  ["status", "--tag", "t", "--json"], ["log", "--json", "--tag=t"]])
def test_the_quick_path_prints_the_same_text_as_the_full_cli(proj: Project, args: list[str]) -> None:
    assert _nl(proj, CLI, *args) == _nl(proj, FULL_CLI, *args)


def _rows(text: str) -> list[str]:
    """Every line but the borders and the title, its cells' text with the padding between them made one space."""
    return [" ".join(line.replace("│", " ").replace("┃", " ").split()) for line in text.splitlines()
            if line.strip() and line.strip()[0] not in "┏┡└" and line.strip() not in ("last 10 trials", "slots")]


@pytest.mark.parametrize("command", ["status", "log"])
def test_the_tables_have_the_same_rows(proj: Project, command: str) -> None:
    quick = _nl(proj, CLI, command)
    full = _nl(proj, FULL_CLI, command, env={"COLUMNS": "1000"})  # wide enough that rich cuts nothing
    assert _rows(quick) == _rows(full)
    assert "raise LR to 0.3" in quick and "exit with code 3 [exit code 3]" in quick
    if command == "status":
        assert "last 10 trials" in quick and "slots" in quick and "keep rule" in quick


def test_on_a_terminal_the_table_fits_and_shows_the_same_trials(proj: Project) -> None:
    env = {k: v for k, v in proj.env.items() if k not in ("COLUMNS", "LINES")} | {"TERM": "xterm-256color"}
    shown = {}
    for name, cli in (("quick", CLI), ("full", FULL_CLI)):
        code, raw = in_pty([*cli, "log", "--tag", "t"], proj.dir, env, columns=60)
        assert code == 0, raw
        plain = re.sub(r"\x1b\[[0-9;]*m", "", raw).replace("\r", "")
        assert all(cell_len(line) <= 60 for line in plain.splitlines()), plain
        shown[name] = re.findall(r"^│ +(\d+) │ (\w+) ", plain, re.MULTILINE)
    assert shown["quick"] == shown["full"] and len(shown["quick"]) == len(IDEAS) + 1


@pytest.mark.parametrize("args", [["--version"], ["status"], ["status", "--json"], ["log"], ["log", "--json"]])
def test_the_quick_path_imports_no_typer_pydantic_or_rich(proj: Project, args: list[str]) -> None:
    _nl(proj, CLI, "status")  # the config checked once (by the schema) and noted
    code = ("import sys\nfrom nightlab.entry import main\nsys.argv = ['nightlab', *sys.argv[1:]]\ntry:\n    main()\n"
            f"finally:\n    sys.stderr.write(repr([m for m in {HEAVY!r} if m in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=proj.dir, env=proj.env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "[]", proc.stderr
    assert proc.stdout.strip()


def test_an_edited_config_is_checked_again(proj: Project) -> None:
    original = (proj.dir / "nightlab.toml").read_text()
    try:
        _nl(proj, CLI, "status")
        proj.write("nightlab.toml", original + "\n[report]\nbogus_key = 1\n")
        line = one_line_error(proj.nl("status", "--json"))
        assert "nightlab.toml" in line and "bogus_key" in line
        proj.write("nightlab.toml", original.replace('goal = "minimize"', 'goal = "maximize"'))
        assert json.loads(_nl(proj, CLI, "status", "--json"))["goal"] == "maximize"  # not what was noted before
        (proj.dir / ".nightlab" / "config-checked.json").write_text("{not json")  # a damaged note: checked again
        assert json.loads(_nl(proj, CLI, "status", "--json"))["goal"] == "maximize"
    finally:
        proj.write("nightlab.toml", original)


@pytest.mark.parametrize("args, words", [
    (["status", "--help"], ["Usage", "--json"]),
    (["status", "--tag", "nope"], ["'nope'"]),
    (["log", "--tag", "bad tag!"], ["--tag"]),
    (["status", "--json", "--json-extra"], ["--json-extra"]),
])
def test_help_and_errors_read_as_before(proj: Project, args: list[str], words: list[str]) -> None:
    quick, full = proj.nl(*args), subprocess.run([*FULL_CLI, *args], cwd=proj.dir, env=proj.env,
                                                   capture_output=True, text=True, timeout=120)
    assert (quick.returncode, quick.stdout, quick.stderr) == (full.returncode, full.stdout, full.stderr)
    assert all(word in quick.stdout + quick.stderr for word in words)


def test_which_arguments_the_quick_path_answers() -> None:
    assert parse(["status"]) == ("status", None, None, False)
    assert parse(["log", "--json", "--tag=t", "--config", "a.toml"]) == ("log", Path("a.toml"), "t", True)
    for other in (["status", "--help"], ["-v", "status"], ["status", "--tag"], ["status", "--tag", "a", "--tag", "b"],
                  ["status", "--tag="], ["log", "--json=1"], ["run"], [], ["status", "extra"]):
        assert parse(other) is None, other


def test_a_plain_table_fits_its_width_and_cuts_only_the_columns_that_give_way() -> None:
    columns = [Column("n", right=True), Column("what", shrink=True)]
    rows = [["1", "a description far longer than the table may be, in 漢字 too"], ["22", "short\nline"]]
    for width in (20, 40, 200):
        lines = table(columns, rows, Style(width=width)).splitlines()
        assert all(cell_len(line) <= width for line in lines), lines
        assert all(line[-1] in "┓┃┩│┘" for line in lines)
        assert "│ 22 │" in lines[4] and "short line" in lines[4]  # a newline in a cell stays on its row
    assert "…" in table(columns, rows, Style(width=40))
    whole = table(columns, rows, Style())
    assert "in 漢字 too │" in whole and "…" not in whole


def test_a_project_that_never_ran_gets_no_state_directory(tmp_path: Path) -> None:
    proj = make_project(tmp_path)
    line = one_line_error(proj.nl("status"))
    assert "no run with tag" in line and not (proj.dir / ".nightlab").exists()
