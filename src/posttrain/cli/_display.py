"""The progress display of a long command (`eval`, `convert`, `run`, `demo`), set up one way for all.

Without `--verbose`, the libraries' bars and messages are turned off where they can be, and what
they print anyway goes to a log file that the display names; with `--verbose` they stay on the
terminal. The display writes to stderr, so stdout holds only the command's result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console

from posttrain import _progress
from posttrain.cli._app import err_console


def verbose_option() -> bool:
    return typer.Option(False, "--verbose", "-v",
                        help="Show the libraries' own progress bars and messages instead of sending them to the log file.")


@contextlib.contextmanager
def long_command(log_path: Path, *, verbose: bool = False, title: str | None = None) -> Iterator[_progress.Display]:
    """One progress display for the block; library output to `log_path` unless `verbose`."""
    if not verbose:
        _progress.quiet_libraries()
    with _progress.library_output_to(None if verbose else log_path) as terminal:
        # A copy of the terminal's own descriptor: rich sees whether it is a terminal and how wide.
        console = err_console if terminal is None else Console(file=terminal, stderr=True)
        with _progress.Display(console, log_path=None if verbose else log_path, title=title) as display:
            yield display
