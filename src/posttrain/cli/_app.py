"""The one typer application every command module adds its commands to."""

from __future__ import annotations

import typer
from rich.console import Console

from posttrain._terminal import esc
from posttrain.cli._metavars import PlainHelpGroup

app = typer.Typer(
    name="posttrain",
    help="After fine-tuning: detect, convert to GGUF, quantize, serve, evaluate, compare, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=PlainHelpGroup,  # plain metavars (TEXT, N, PATH) in every command's --help, not Python types
)
console = Console()
err_console = Console(stderr=True)


def print_error(line: str) -> None:
    """The one-line error format every command uses: `error: <what, where> — <remedy>` on stderr."""
    err_console.print(f"[bold red]error:[/] {esc(line)}", highlight=False, soft_wrap=True)
