"""The parts of the quick `status`/`log` path (entry.py, plain_table.py, checked_config.py) on their own: text cut and
wrapped by terminal columns (wide, combining and control characters), colours only where asked, the argument lists
the quick path takes, a closed pipe, and the note of a checked config trusted only for the text it was made for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nightlab import checked_config
from nightlab.entry import parse
from nightlab.plain_table import Column, Style, cell_len, cut, pairs, table
from nlkit import CLI, in_pty, make_project


def test_text_is_cut_by_the_columns_it_takes() -> None:
    assert cell_len("漢字") == 4 and cell_len("e\u0301") == 1 and cell_len("abc") == 3
    assert cut("abc", 3) == "abc" and cut("abcd", 3) == "ab…"
    assert cut("漢字漢字", 4) == "漢…"  # a wide character that would cross the edge goes whole
    assert cut("漢字漢字", 5) == "漢字…" and cell_len(cut("漢字漢字", 5)) == 5
    assert cut("e\u0301e\u0301e\u0301", 2) == "e\u0301…"  # an accent stays with its letter


def test_a_cell_cannot_move_the_cursor_or_colour_the_terminal() -> None:
    rows = [["1", "\x1b[2J\x1b[31mred\x1b[0m\rback\ttab\x7f"]]
    text = table([Column("n"), Column("what")], rows, Style())
    assert not any(ord(c) < 32 and c != "\n" or c == "\x7f" for c in text)
    assert len(text.splitlines()) == 5  # head rule, header, rule, one row, bottom rule
    coloured = table([Column("n"), Column("what")], rows, Style(color=True))
    assert coloured.count("\x1b[") == coloured.count("\x1b[0m") * 2  # only paint()'s own codes, each closed


def test_paint_uses_only_the_styles_it_knows_and_only_when_asked() -> None:
    assert Style(color=True).paint("x", "bold red") == "\x1b[1;31mx\x1b[0m"
    assert Style(color=True).paint("x", "underline") == "x"  # no code for it: plain text
    assert Style(color=False).paint("x", "bold") == "x"
    assert Style(color=True).paint("x", "") == "x"


def test_columns_justify_cap_their_width_and_keep_one_column_when_nothing_fits() -> None:
    columns = [Column("n", right=True), Column("name", max_width=5), Column("what", shrink=True)]
    rows = [["7", "abcdefgh", "a long description"], ["123", "ab", "short"]]
    lines = table(columns, rows, Style(width=80)).splitlines()
    assert "│   7 │ abcd… │ a long description │" == lines[3]  # right, capped, and the rest at full width
    assert "│ abcdefgh │" in table(columns, rows, Style())  # a pipe gets every cell whole
    tiny = table(columns, rows, Style(width=5)).splitlines()  # narrower than any table can be
    assert len({cell_len(line) for line in tiny}) == 1  # still a rectangle, each column at least one wide
    assert all(line.count("│") == 4 for line in tiny[3:5])


def test_a_title_is_centred_unless_asked_to_stay_left() -> None:
    columns, rows = [Column("n"), Column("what")], [["1", "something"]]
    centred = table(columns, rows, Style(), title="T").splitlines()
    span = cell_len(centred[1])
    assert centred[0] == " " * ((span - 1) // 2) + "T"
    assert table(columns, rows, Style(), title="T", title_left=True).splitlines()[0] == "T"
    assert table(columns, rows, Style(color=True), title="T", title_left=True).startswith("\x1b[3mT\x1b[0m")


def test_pairs_align_keys_and_wrap_long_values_under_themselves() -> None:
    rows = [("tag", "t", ""), ("best commit", "word " * 20 + "end", ""), ("note", "a\nb", "")]
    lines = pairs(rows, Style(width=40)).splitlines()
    assert lines[0] == "tag          t"
    assert lines[1].startswith("best commit  word") and len(lines) > 4
    wrapped = [line for line in lines[2:] if not line.startswith("note")]
    assert wrapped and all(line.startswith(" " * 13) and cell_len(line) <= 40 for line in wrapped)
    assert lines[-1] == "note         a b"  # a newline in a value stays on its line
    assert len(pairs(rows, Style()).splitlines()) == 3  # a pipe: one line per key
    assert pairs([], Style(width=40)) == ""


SHOW_STYLE = "from nightlab.plain_table import terminal_style as t; s = t(); print(s.width, s.color)"


@pytest.mark.parametrize("env, said", [({"COLUMNS": "55"}, "55 True"), ({"COLUMNS": "7"}, "20 True"),
                                       ({"COLUMNS": "x"}, "66 True"), ({"NO_COLOR": "1"}, "66 False"),
                                       ({"TERM": "dumb"}, "66 False")])
def test_a_terminals_width_and_colours(tmp_path: Path, env: dict[str, str], said: str) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "TERM")}
    code, out = in_pty([sys.executable, "-c", SHOW_STYLE], tmp_path, base | {"TERM": "xterm"} | env, columns=66,
                       timeout=60)
    assert code == 0 and out.strip() == said


def test_the_quick_path_leaves_odd_argument_lists_to_the_full_cli() -> None:
    for other in (["status", "--tag", "--json"], ["status", "--json", "--json"], ["log", "--tag", "a", "--tag=b"],
                  ["status", "--config", "-"], ["log", "--config="], ["status", "--TAG", "t"], ["log", "-h"]):
        assert parse(other) is None, other
    assert parse(["log", "--config", "sub dir/n.toml", "--json"]) == ("log", Path("sub dir/n.toml"), None, True)
    assert parse(["status", "--tag=a=b"]) == ("status", None, "a=b", False)  # the value keeps its own '='


def test_a_reader_that_stops_early_is_no_error() -> None:
    read, write = os.pipe()
    os.close(read)  # as `nightlab log | head -0` leaves it
    try:
        proc = subprocess.run([*CLI, "--version"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == ""


def test_a_checked_configs_note_holds_only_for_the_text_it_was_made_for(tmp_path: Path) -> None:
    proj = make_project(tmp_path)
    toml, note = proj.dir / "nightlab.toml", proj.dir / ".nightlab" / checked_config.NOTE
    assert checked_config.load(toml).metric.goal == "minimize"
    assert not note.parent.exists()  # a read-only command makes no state directory
    note.parent.mkdir()
    checked = checked_config.load(toml)
    assert (checked.root, checked.metric.name) == (proj.dir.resolve(), "val_loss")
    noted = json.loads(note.read_text())
    assert (noted["metric"], noted["goal"]) == ("val_loss", "minimize")
    note.write_text(json.dumps({**noted, "goal": "maximize"}))
    assert checked_config.load(toml).metric.goal == "maximize"  # this text's note is read, not the schema
    toml.write_text(toml.read_text().replace('name = "val_loss"', 'name = "val_acc"'))
    assert checked_config.load(toml).metric.name == "val_acc"  # another text: checked again
    assert json.loads(note.read_text())["key"] != noted["key"]
