"""Atomic writes and file hashes, shared by every stage.

A reader (a resumed run, the watcher, a user's editor) must never see half a file under its final
name: content goes to a temporary file in the same directory and is renamed over the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def about_to_write(path: Path) -> None:
    """Called before each write posttrain makes to a file of its own: an atomic write's temporary
    file here, a transaction of the store (store/_db.py). It does nothing. It is the one place where
    the crash-consistency harness (tests/crash_harness.py, through tests/fault_site/) makes the k-th
    write of a run fail with ENOSPC or EIO, as a full or failing disk would, in the processes it
    starts only: so every write can be tested to fail cleanly without patching any library."""


def _stage(path: Path, text: str, mode: int) -> str:
    """`text` in a complete, synced temporary sibling of `path`; its name."""
    about_to_write(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            if hasattr(os, "fchmod"):  # POSIX: mkstemp makes 0600; outputs are meant to be read by others
                os.fchmod(f.fileno(), mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_text_atomic(path: str | Path, text: str, *, mode: int = 0o644) -> None:
    write_texts_atomic({Path(path): text}, mode=mode)


def write_texts_atomic(files: dict[Path, str], *, mode: int = 0o644) -> None:
    """Several files that belong together (a report's HTML, Markdown and JSON): every one is written
    completely before the first is renamed into place, so a crash leaves the old set or the new one."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            staged.append((_stage(Path(path), text, mode), Path(path)))
        for tmp, path in staged:
            replace_retrying(tmp, path)
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


# Windows refuses to rename over a file that another process holds open without FILE_SHARE_DELETE
# (ERROR_ACCESS_DENIED 5, ERROR_SHARING_VIOLATION 32): a `posttrain status` reading the watcher's
# status file, an editor, Defender or OneDrive scanning it. The holder lets go within moments.
_SHARING_ERRORS = (5, 32)
SHARING_RETRY_S = 2.0


def _held_by_another(error: OSError) -> bool:
    return isinstance(error, PermissionError) and getattr(error, "winerror", None) in _SHARING_ERRORS


def _while_held(action: Callable[[], T]) -> T:
    """`action()`, tried again for up to SHARING_RETRY_S while Windows says another process holds the
    file open; any other error (and a hold that lasts) is raised as it is."""
    deadline = time.monotonic() + SHARING_RETRY_S
    while True:
        try:
            return action()
        except OSError as e:
            if not _held_by_another(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def replace_retrying(src: str | Path, dst: str | Path) -> None:
    """`os.replace` over a target another process may hold open for a moment (see _while_held)."""
    _while_held(lambda: os.replace(src, dst))


def write_json_atomic(path: str | Path, doc: Any) -> str:
    """Write `doc` as indented JSON with sorted keys; return the sha256 of the text written."""
    text = json.dumps(doc, indent=2, sort_keys=True, default=str)
    write_text_atomic(path, text)
    return hashlib.sha256(text.encode()).hexdigest()


def human_bytes(n: float) -> str:
    """A size as people read it, in powers of 1000 (GB as disks and Hugging Face count them)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_json_file(path: str | Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when the file is missing, unreadable, not JSON or not an
    object (status and result files: absent and half-written mean the same to their readers)."""
    try:
        # Mid-rename on Windows the file can be held for a moment: the new one is there soon after.
        doc = json.loads(_while_held(lambda: Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


# How posttrain's own outputs start: JSON documents name a `posttrain.*` schema, HTML pages carry a
# generator meta tag (older pages: a title starting "posttrain"), Markdown reports their heading.
_OWN_HTML = ('<meta name="generator" content="posttrain', "<title>posttrain ")
_OWN_MARKDOWN = "## posttrain report"


def written_by_posttrain(path: str | Path) -> bool:
    """Whether the file at `path` is one of posttrain's own outputs (a report, an index page, a
    compare document), recognised by its content, not its name."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    stripped = head.lstrip()
    if stripped.startswith("{"):
        doc = read_json_file(path)
        return doc is not None and isinstance(doc.get("schema"), str) and doc["schema"].startswith("posttrain.")
    if stripped.startswith(_OWN_MARKDOWN):
        return True
    return any(marker in head for marker in _OWN_HTML)


def refuse_foreign(paths: list[Path], *, force: bool) -> None:
    """Refuse to replace an existing file that posttrain did not write, unless `force`."""
    from posttrain.errors import PosttrainError

    for path in paths:
        if path.is_dir():
            raise PosttrainError(f"{path} is a directory, where posttrain would write a file",
                                 remedy="choose another --out")
        if not force and path.exists() and not written_by_posttrain(path):
            raise PosttrainError(f"{path} exists and was not written by posttrain; it is left as it is",
                                 remedy="choose another --out, or pass --force to replace it")
