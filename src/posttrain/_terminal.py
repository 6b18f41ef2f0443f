"""Text from outside (paths, names, messages, model output) made safe to show in the terminal.

rich reads `[...]` as markup, and a terminal obeys control characters: a file name holding `[/x]`
would crash a print, `[bold red]…` would be shown as something else, and an escape sequence could
rewrite the screen. Everything posttrain prints through rich that it did not write itself goes
through `esc`.
"""

from __future__ import annotations

import codecs
import sys

from rich.markup import escape


def esc(value: object, *, one_line: bool = True) -> str:
    """`value` as text for a rich markup string: markup escaped, so `[/x]` cannot crash and `[bold]`
    is printed as typed; control characters (an escape sequence in a file name, a carriage return)
    spelled out as Python writes them (`\\x1b`, `\\r`), and so are line breaks unless `one_line=False`."""
    keep = "" if one_line else "\n\t"
    text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii")
                       for c in text)
    return escape(text)


def _cell_text(cell: object) -> str:
    from rich.text import Text

    return cell.plain if isinstance(cell, Text) else str(cell)


def _widest(column) -> int:
    texts = [_cell_text(column.header), *(_cell_text(c) for c in column.cells)]
    return max((len(line) for t in texts for line in t.splitlines() or [""]), default=0)


def _needs(column) -> int:
    """The narrowest a column can be without splitting a word (or any text, for a no-wrap column)."""
    texts = [_cell_text(column.header), *(_cell_text(c) for c in column.cells)]
    if column.no_wrap:
        return max((len(line) for t in texts for line in t.splitlines() or [""]), default=0)
    return max((len(w) for t in texts for w in t.split()), default=0)


def _frame(table) -> int:
    """What a table takes besides its columns' content: padding and the separators between columns."""
    from rich.padding import Padding

    _, right, _, left = Padding.unpack(table.padding)
    cols = table.columns
    separators = (len(cols) - 1 + (2 if table.show_edge else 0)) if table.box else 0
    return len(cols) * (left + right) + separators


def table_min_width(table) -> int:
    """Columns at their narrowest (`_needs`), their padding and the separators between them."""
    return sum(_needs(c) for c in table.columns) + _frame(table)


def fit_table(table, width: int, *, drop: tuple[str, ...] = ()):
    """`table` made readable at `width` columns: no column narrower than its longest word (so a name
    wraps between words and is never split inside one), and when that does not fit, the columns named
    in `drop` are left out, in that order, until it does. Returns the table."""
    for column in table.columns:
        column.min_width = max(column.min_width or 0, _needs(column))
    for header in drop:
        if table_min_width(table) <= width:
            break
        table.columns[:] = [c for c in table.columns if _cell_text(c.header) != header]
    _share_width(table, width)
    return table


def _share_width(table, width: int) -> None:
    """Fixed column widths when the table must wrap: rich's own shrinking is proportional and can
    leave a column below its longest word; here each gets its narrowest width plus a share of the
    room left, in proportion to how much wider its content would like to be."""
    cols = table.columns
    if not cols or sum(_widest(c) for c in cols) + _frame(table) <= width:
        return  # fits unwrapped: rich lays it out as it is
    needs = [_needs(c) for c in cols]
    wants = [max(_widest(c) - n, 0) for c, n in zip(cols, needs, strict=True)]
    spare = max(width - table_min_width(table), 0)
    total = sum(wants) or 1
    extra = [spare * w // total for w in wants]
    for column, need, more in zip(cols, needs, extra, strict=True):
        column.width = need + more


# ---------------------------------------------------------------- output any console can encode

# posttrain's own typography and the plain text that says the same where the console's code page
# lacks it. Windows gives a redirected `posttrain … > log` (or `| findstr`) its ANSI code page with
# strict errors: cp932 on a Japanese system has none of `— – ✓ · ≥`, and one of them in a line
# ended the command with UnicodeEncodeError.
_PLAIN = {"—": "-", "–": "-", "✓": "ok", "✗": "x", "·": "|", "≥": ">=", "≤": "<=", "×": "x", "…": "...",
          "→": "->", "←": "<-", "±": "+/-", "Δ": "d", "α": "alpha", "≈": "~", "•": "*", "‘": "'", "’": "'",
          "“": '"', "”": '"', "━": "-", "─": "-", "│": "|", "█": "#", "▏": "|", "⠋": "-", "✔": "ok"}
ERRORS = "posttrain.plain"


def _plain_instead(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start:error.end]
    return "".join(_PLAIN.get(c, "?") for c in text), error.end


codecs.register_error(ERRORS, _plain_instead)  # by name, for any stream: `errors="posttrain.plain"`


def encodable_output() -> None:
    """Make sys.stdout and sys.stderr write what their encoding cannot hold as plain text
    (`_PLAIN`, else `?`) instead of raising. Called once, when the CLI starts."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # a plain TextIOWrapper; not pytest's capture
        if reconfigure is not None and (stream.encoding or "").lower().replace("-", "") != "utf8":
            try:
                reconfigure(errors=ERRORS)
            except (ValueError, OSError):  # closed or detached: nothing to write to anyway
                pass
