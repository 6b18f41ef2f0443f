"""Command-line entry point. Each command group lives in its own module and adds itself to `app`."""

from __future__ import annotations

import importlib
import sys

import typer

from posttrain import __version__
from posttrain.cli._app import app, err_console, print_error
from posttrain.cli._errors import failure_line

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
    "ship",
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
    """Run the CLI. Every failure ends here as one line on stderr (see `_errors`); usage errors are
    click's (exit 2)."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # the one boundary: nothing leaves as a traceback
        line, code = failure_line(e)
        print_error(line)
        sys.exit(code)
