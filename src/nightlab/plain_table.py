"""Tables drawn without rich, for the read-only commands (quick_views.py): the look of rich's default table (a
heavy head, light rows) at a fraction of its cost on a long night's `nightlab log`. Given a width (a terminal's),
the table fits it: the columns that may give way are cut in their cells with an ellipsis; without one (a pipe),
nothing is cut and every row is one whole line, for grep."""

from __future__ import annotations

import os
import unicodedata

# each cell's text stays on its line: control characters (newlines, escape sequences from an agent's text) are
# shown as spaces
_CONTROLS = dict.fromkeys([*range(32), 127], " ")
# rich's style words, as the terminal's SGR codes
_SGR = {"bold": "1", "dim": "2", "italic": "3", "red": "31", "green": "32", "yellow": "33", "blue": "34",
        "magenta": "35", "cyan": "36"}


class Column:  # plain classes, not dataclasses: creating one costs a millisecond at each start
    def __init__(self, header: str, right: bool = False, shrink: bool = False, max_width: int = 0) -> None:
        self.header = header
        self.right = right  # justified right
        self.shrink = shrink  # may be cut to fit the width
        self.max_width = max_width  # at most this wide when fitted to a width (0: no limit)


class Style:
    """How a table is drawn: `width` None draws it whole; `color` uses the terminal's colours (SGR codes)."""

    def __init__(self, width: int | None = None, color: bool = False) -> None:
        self.width = width
        self.color = color

    def paint(self, text: str, style: str) -> str:
        codes = [_SGR[word] for word in style.split() if word in _SGR] if self.color and style else []
        return f"\x1b[{';'.join(codes)}m{text}\x1b[0m" if codes else text


def terminal_style() -> Style:
    """A terminal's width (COLUMNS wins, as for rich) and colours (unless NO_COLOR or TERM=dumb); a pipe's none."""
    if not os.isatty(1):
        return Style()
    try:
        width = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        try:
            width = os.get_terminal_size(1).columns
        except OSError:  # a terminal that does not say its size
            width = 80
    return Style(width=max(width, 20), color="NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb")


def cell_len(text: str) -> int:
    """Columns a text takes on a terminal: wide (East Asian) characters take two, combining ones none."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def cut(text: str, width: int) -> str:
    """`text` in at most `width` columns, with an ellipsis where it was cut."""
    if cell_len(text) <= width:
        return text
    out, used = [], 0
    for c in text:
        used += cell_len(c)
        if used > width - 1:
            break
        out.append(c)
    return "".join(out) + "…"


def _fit(columns: list[Column], natural: list[int], width: int | None) -> list[int]:
    """Each column's width: its widest cell, narrowed (widest first) until the table fits `width`."""
    if width is None:
        return natural
    widths = [min(w, c.max_width) if c.max_width else w for c, w in zip(columns, natural)]
    excess = sum(widths) + 3 * len(widths) + 1 - width
    while excess > 0:
        flexible = [i for i, c in enumerate(columns) if c.shrink and widths[i] > 1] or \
            [i for i in range(len(widths)) if widths[i] > 1]
        if not flexible:
            break
        i = max(flexible, key=lambda j: widths[j])
        widths[i] -= 1
        excess -= 1
    return widths


def table(columns: list[Column], rows: list[list[str]], style: Style, title: str = "", title_left: bool = False,
          cell_styles: list[list[str]] | None = None) -> str:
    """The table as text, one line per row; `cell_styles[r][c]`: a rich style word or words for a cell."""
    rows = [[cell.translate(_CONTROLS) for cell in row] for row in rows]
    natural = [max([cell_len(c.header), *(cell_len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    widths = _fit(columns, natural, style.width)

    def line(cells: list[str], bar: str, styles: list[str] | None = None) -> str:
        out = []
        for i, (text, c, w) in enumerate(zip(cells, columns, widths)):
            text = cut(text, w)
            pad = " " * (w - cell_len(text))
            out.append(" " + style.paint(pad + text if c.right else text + pad, styles[i] if styles else "") + " ")
        return bar + bar.join(out) + bar

    rules = ["━" * (w + 2) for w in widths], ["─" * (w + 2) for w in widths]
    lines = ["┏" + "┳".join(rules[0]) + "┓",
             line([c.header for c in columns], "┃", ["bold"] * len(columns)),
             "┡" + "╇".join(rules[0]) + "┩",
             *(line(row, "│", cell_styles[r] if cell_styles else None) for r, row in enumerate(rows)),
             "└" + "┴".join(rules[1]) + "┘"]
    if title:
        span = sum(widths) + 3 * len(widths) + 1
        shown = title if title_left or cell_len(title) >= span else " " * ((span - cell_len(title)) // 2) + title
        lines.insert(0, style.paint(shown, "italic"))
    return "\n".join(lines)


def pairs(rows: list[tuple[str, str, str]], style: Style) -> str:
    """Key and value lines (no borders), the keys bold and aligned; on a terminal a long value wraps under itself.
    `rows`: (key, value, the value's style)."""
    rows = [(key, value.translate(_CONTROLS), how) for key, value, how in rows]
    keys = max((cell_len(key) for key, _, _ in rows), default=0)
    room = (style.width - keys - 2) if style.width else None
    out = []
    for key, value, how in rows:
        parts = _wrap(value, room) if room and room > 10 else [value]
        for i, part in enumerate(parts):
            label = style.paint(key + " " * (keys - cell_len(key)), "bold") if i == 0 else " " * keys
            out.append(f"{label}  {style.paint(part, how)}")
    return "\n".join(out)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]
