"""The one typer application every command module adds its commands to."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="posttrain",
    help="After fine-tuning: detect, convert to GGUF, quantize, serve, evaluate, compare, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)
