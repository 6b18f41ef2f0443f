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
    "lora",
    "ship",
    "series",
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


def _click_exceptions():
    """click's exception classes: typer >= 0.20 carries its own copy of click, older typer uses click."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions
    return exceptions


_clicks = _click_exceptions()
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


def _usage_line(e) -> str:
    """click's boxed usage text as one `error:` line plus where to look."""
    command = e.ctx.command_path if e.ctx is not None else "posttrain"
    return f"{e.format_message()} — see '{command} --help'"


def main() -> None:
    """Run the CLI. Every failure ends here as one line on stderr (see `_errors`): usage errors exit
    2, Ctrl-C 130, everything else 1."""
    from posttrain._terminal import encodable_output

    encodable_output()  # before the first line: a cp932 console must not end a command over an em dash
    try:
        # standalone_mode=False: click's usage errors and aborts come here instead of being printed
        # as a multi-line box; typer turns Ctrl-C inside a command into a return value of 130.
        code = app(standalone_mode=False, prog_name="posttrain")
    except _clicks.NoArgsIsHelpError as e:
        e.show()  # `posttrain` alone: the help, as before
        sys.exit(EXIT_USAGE)
    except _clicks.UsageError as e:
        print_error(_usage_line(e))
        sys.exit(EXIT_USAGE)
    except _clicks.ClickException as e:
        print_error(e.format_message())
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        code = EXIT_INTERRUPTED
    except Exception as e:  # the one boundary: nothing leaves as a traceback
        line, code = failure_line(e)
        print_error(line)
        sys.exit(code)
    if code == EXIT_INTERRUPTED:
        # Outputs are written under temporary names and renamed when complete: nothing half-written stays.
        err_console.print("interrupted (Ctrl-C)", highlight=False, soft_wrap=True)
    sys.exit(code if isinstance(code, int) else 0)
