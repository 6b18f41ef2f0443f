"""The one typer application every command module adds its commands to."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="posttrain",
    help="After fine-tuning: detect, convert to GGUF, quantize, serve, evaluate, compare, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def esc(value: object, *, one_line: bool = True) -> str:
    """Text from outside (a path, a name, a message, model output) made safe to put in a rich markup
    string: `[/x]` cannot crash and `[bold]` is printed as typed, not read as a style. Control
    characters (a terminal escape sequence in a file name, a carriage return) are spelled out as
    Python writes them (`\\x1b`, `\\r`), and so are line breaks unless `one_line=False`."""
    keep = "" if one_line else "\n\t"
    text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii")
                       for c in text)
    return escape(text)


def print_error(line: str) -> None:
    """The one-line error format every command uses: `error: <what, where> — <remedy>` on stderr."""
    err_console.print(f"[bold red]error:[/] {esc(line)}", highlight=False, soft_wrap=True)
