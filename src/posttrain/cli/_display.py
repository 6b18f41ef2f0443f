"""The progress display of every command that runs libraries (`eval`, `convert`, `run`, `ship`, `serve`,
`register`, `lora`, `doctor`, `make-tiny`, …), set up one way for all.

Without `--verbose`, the libraries' bars and messages are turned off where they can be, and what
they print anyway goes to a log file that the display names; with `--verbose` they stay on the
terminal. The display writes to stderr, so stdout holds only the command's result.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console

from posttrain import _progress, llamacpp
from posttrain.cli._app import err_console


def verbose_option() -> bool:
    return typer.Option(False, "--verbose", "-v",
                        help="Show the libraries' own progress bars and messages instead of sending them to the log file.")


def command_log(command: str, home: Path | None = None) -> Path:
    """Where a command without an output folder of its own sends the libraries' output:
    HOME/logs/<command>-<time>.log (left out when nothing was written to it)."""
    from posttrain import paths

    return (home or paths.home()) / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"


@contextlib.contextmanager
def long_command(log_path: Path, *, verbose: bool = False, title: str | None = None,
                 follow_children: bool = False) -> Iterator[_progress.Display]:
    """One progress display for the block; library output to `log_path` unless `verbose`.
    `follow_children`: the pipeline's step children (and a watcher's) report their counts to it."""
    if not verbose:
        llamacpp.quiet_libraries()
    with contextlib.ExitStack() as stack:
        terminal = stack.enter_context(llamacpp.library_output_to(None if verbose else log_path))
        # A copy of the terminal's own descriptor: rich sees whether it is a terminal and how wide.
        console = err_console if terminal is None else Console(file=terminal, stderr=True)
        display = stack.enter_context(_progress.Display(console, log_path=None if verbose else log_path, title=title))
        if follow_children:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="posttrain-progress-")))
            stack.enter_context(_environ(_progress.PROGRESS_DIR_ENV, str(folder)))
            display.follow_children(folder)
        yield display


@contextlib.contextmanager
def _environ(key: str, value: str) -> Iterator[None]:
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
