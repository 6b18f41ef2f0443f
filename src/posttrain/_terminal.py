"""Text from outside (paths, names, messages, model output) made safe to show in the terminal.

rich reads `[...]` as markup, and a terminal obeys control characters: a file name holding `[/x]`
would crash a print, `[bold red]…` would be shown as something else, and an escape sequence could
rewrite the screen. Everything posttrain prints through rich that it did not write itself goes
through `esc`.
"""

from __future__ import annotations

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
