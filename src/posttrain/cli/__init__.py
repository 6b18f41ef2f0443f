"""Command-line entry point. Each command group lives in its own module and adds itself to `app`."""

from __future__ import annotations

import importlib
import sys

import typer

from posttrain import __version__
from posttrain.cli._app import app, err_console
from posttrain.errors import PosttrainError

# One module per command group; importing a module registers its commands.
COMMAND_MODULES = [
    "eval",
    "compare",
    "checkpoint",
    "convert",
    "doctor",
    "serve",
    "report",
    "pipeline",
    "demo",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"posttrain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """After fine-tuning: detect, convert to GGUF, quantize, serve, evaluate, compare, report."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"posttrain.cli.{_name}")


def main() -> None:
    try:
        app()
    except PosttrainError as e:
        err_console.print(f"[bold red]error:[/] {e.one_line()}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
