"""The CLI's one error boundary: every failure becomes one line on stderr and an exit code.

Failures a user can act on (bad input, a file in the way, a full disk, a damaged store or data
file) are explained in one line: what went wrong, where (path, line, field) and what to do. Anything
else is a bug: one line saying so, and the full traceback in a log file whose path that line names.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import sys
import tempfile
import tomllib
import traceback
from datetime import UTC, datetime
from pathlib import Path

from posttrain.errors import PosttrainError

EXIT_FAILURE = 1

# errno → (what happened, what to do). The path is added by `_os_error`.
_OS_REMEDIES = {
    errno.EACCES: ("permission denied", "choose a place you may write to, or fix the permissions"),
    errno.EPERM: ("operation not permitted", "choose a place you may write to, or fix the permissions"),
    errno.EEXIST: ("already exists", "remove it or choose another path"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.EISDIR: ("is a directory", "pass a file, not a directory"),
    errno.ENOTDIR: ("a part of the path is not a directory", "check the path: a file stands where a folder should"),
    errno.ENOSPC: ("no space left on the device", "free some space or choose another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another disk"),
    errno.EROFS: ("read-only file system", "choose a writable place"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter name or path"),
    errno.ELOOP: ("too many levels of symbolic links", "check the links along the path"),
}


def _flat(text: object) -> str:
    return " ".join(str(text).split())


def _os_error(e: OSError) -> str:
    what, remedy = _OS_REMEDIES.get(e.errno, (e.strerror or e.__class__.__name__, None))
    where = e.filename
    if e.filename2 is not None:
        where = f"{e.filename} → {e.filename2}"
    line = f"{where}: {what}" if where is not None else f"{what} ({_flat(e)})"
    return f"{line} — {remedy}" if remedy else line


def _validation_error(e) -> str:
    """pydantic's errors as `field.sub: message`, all on one line."""
    parts = []
    for err in e.errors():
        field = ".".join(str(x) for x in err.get("loc", ())) or "value"
        parts.append(f"{field}: {_flat(err.get('msg', ''))}")
    return f"invalid {e.title}: {'; '.join(parts)} — fix the setting named"


def explain(exc: BaseException) -> str | None:
    """One line for a failure the user can act on; None when it is a bug."""
    if isinstance(exc, PosttrainError):
        return exc.one_line()
    if isinstance(exc, OSError):
        return _os_error(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return f"posttrain's store (posttrain.db) is busy: {_flat(exc)} — try again when the other posttrain is done"
    if isinstance(exc, sqlite3.DatabaseError):
        return (f"posttrain's store (posttrain.db) failed: {_flat(exc)} — if the file is damaged, move it aside "
                "(posttrain starts a new one) or pass --home DIR")
    if isinstance(exc, json.JSONDecodeError):
        return (f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg} — "
                "fix the file or write it again")
    if isinstance(exc, tomllib.TOMLDecodeError):
        return f"malformed TOML: {_flat(exc)} — fix the line it names"
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}) — pass a text file in UTF-8"
    yaml_error = _yaml_error_class()
    if yaml_error is not None and isinstance(exc, yaml_error):
        return f"malformed YAML: {_flat(exc)} — fix the line it names"
    if isinstance(exc, ValueError):
        validation_error = _pydantic_error_class()
        if validation_error is not None and isinstance(exc, validation_error):
            return _validation_error(exc)
        return _flat(exc) or exc.__class__.__name__
    return None


def _yaml_error_class():
    # Only loaded modules can have raised: importing a library here would only slow every error down.
    yaml = sys.modules.get("yaml")
    return getattr(yaml, "YAMLError", None)


def _pydantic_error_class():
    pydantic = sys.modules.get("pydantic")
    return getattr(pydantic, "ValidationError", None)


def write_crash_log(exc: BaseException) -> Path | None:
    """The traceback in a new file under the posttrain home's `logs/` (else the temp dir); its path."""
    text = (f"posttrain crash at {datetime.now(UTC).isoformat(timespec='seconds')}\n"
            f"argv: {sys.argv!r}\n\n" + "".join(traceback.format_exception(exc)))
    for folder in _log_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="crash-", suffix=".log", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
                f.write(text)
            return Path(name)
        except OSError:
            continue
    return None


def _log_dirs() -> list[Path]:
    from posttrain import paths

    dirs = []
    try:
        dirs.append(paths.home() / "logs")
    except (RuntimeError, OSError):  # no home directory to be found
        pass
    dirs.append(Path(tempfile.gettempdir()))
    return dirs


def failure_line(exc: BaseException) -> tuple[str, int]:
    """(the line to print, the exit code) for any exception that reached the CLI's top."""
    line = explain(exc)
    if line is not None:
        return line, getattr(exc, "exit_code", EXIT_FAILURE) if isinstance(exc, PosttrainError) else EXIT_FAILURE
    log = write_crash_log(exc)
    where = f"the traceback is in {log}" if log else "no log could be written"
    detail = _flat(exc)
    return (f"unexpected {exc.__class__.__name__}{': ' + detail[:300] if detail else ''} — "
            f"this is a bug in posttrain; {where}"), EXIT_FAILURE
