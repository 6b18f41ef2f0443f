"""The libraries' own output kept off the terminal while a long command shows its progress.

What the libraries underneath print (datasets' "Generating split", tqdm bars from lm-eval and
transformers, lm-eval's logging, `git`'s "fatal: not a git repository" when lm-eval asks for a
commit hash, llama.cpp's native logs) goes to a log file instead: `library_output_to` points the
process's stdout and stderr file descriptors there for the duration, so output from child processes
and C code is caught too, and the display writes to a copy of the terminal's descriptor.
`--verbose` leaves everything where it was.

`stderr_to` is the narrow form, for one llama.cpp call: only fd 2, where llama.cpp logs below
Python, sent elsewhere for the duration (its per-tensor lines while a model loads or quantizes).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from posttrain import _progress, _terminal

# Read by tqdm, datasets, huggingface_hub and transformers when they are imported (also in the
# step children, which inherit the environment): most of their bars are off, even in the log files
# (lm-eval asks for some bars explicitly; those go to the log file).
QUIET_ENV = {
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def quiet_libraries() -> None:
    """Turn the libraries' progress bars off for this process and its children (before they are imported)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def library_output_to(log_path: Path | None) -> Iterator[io.TextIOBase | None]:
    """Send everything written to this process's stdout/stderr (Python, C code, child processes) to
    `log_path` while the block runs; yield a text stream on the terminal's stderr for the display.
    With `log_path` None nothing is moved and None is yielded (the display then uses the console)."""
    if log_path is None:
        yield None
        return
    created = [d for d in (log_path.parent, *log_path.parent.parents) if not d.exists()]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    existed = log_path.exists()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    # The display's stream, in the encoding the terminal (or the file it is redirected to) expects.
    terminal = os.fdopen(os.dup(saved[2]), "w", encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                         errors=_terminal.ERRORS, buffering=1)
    handler = _warnings_to(terminal)
    python_streams = sys.stdout, sys.stderr
    try:
        with open(log_path, "ab", buffering=0) as log:
            for fd in (1, 2):
                os.dup2(log.fileno(), fd)
            # Python's own writers go to the log directly, not through the objects bound to the old
            # descriptors: on Windows sys.stdout is a console object holding the console's handle, which
            # the dup2 above closes, so a print or a tqdm write there failed with WinError 6
            # (cpython#74740). The log is UTF-8 whatever the console's code page.
            to_log = open(log.fileno(), "w", encoding="utf-8", errors="backslashreplace", buffering=1,  # noqa: SIM115
                          closefd=False)
            sys.stdout = sys.stderr = to_log
            try:
                yield terminal
            finally:
                with contextlib.suppress(Exception):
                    to_log.flush()
                sys.stdout, sys.stderr = python_streams
                to_log.close()
                for stream in python_streams:
                    with contextlib.suppress(Exception):
                        stream.flush()
                for fd, copy in saved.items():
                    os.dup2(copy, fd)
    finally:
        logging.getLogger("posttrain").removeHandler(handler)
        for copy in saved.values():
            os.close(copy)
        terminal.close()
        _drop_if_empty(log_path, existed, created)


def _drop_if_empty(log_path: Path, existed: bool, created: list[Path]) -> None:
    """A command that failed before any work leaves nothing behind: no empty log, no folder made for it."""
    with contextlib.suppress(OSError):
        if not existed and log_path.stat().st_size == 0:
            log_path.unlink()
            for folder in created:  # deepest first
                folder.rmdir()


class _AboveDisplay(logging.StreamHandler):
    """posttrain's own warnings stay on the terminal, printed above the live line when there is one."""

    def emit(self, record: logging.LogRecord) -> None:
        display = _progress.current()
        if display is None:
            super().emit(record)
            return
        from posttrain._terminal import esc

        try:
            display.line(f"[yellow]{esc(record.levelname.lower())}:[/] {esc(record.getMessage())}")
        except Exception:  # noqa: BLE001 - a warning that cannot be shown is not worth a failure
            self.handleError(record)


def _warnings_to(stream) -> logging.Handler:
    handler = _AboveDisplay(stream)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.getLogger("posttrain").addHandler(handler)
    return handler


# File descriptor 2 is process-wide: a redirect in one thread while another thread redirects it too
# would restore the wrong target. Every redirect (and every llama.cpp load, which redirects on its
# own when verbose=False) holds this lock.
FD2_LOCK = threading.RLock()


@contextlib.contextmanager
def stderr_to(path: str | os.PathLike):
    """Send fd 2 (where llama.cpp logs, below Python) to `path` for the duration."""
    with FD2_LOCK, open(path, "a") as target:
        saved = os.dup(2)
        os.dup2(target.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
