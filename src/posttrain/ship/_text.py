"""The held-out text the ladder is measured on: the user's own files, or the evaluation tasks' documents."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

from posttrain.errors import PosttrainError

# Plain text, and the same compressed the way data sets are shipped (hellaswag_val_full.txt.bz2).
_OPENERS = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}
_TEXT_SUFFIXES = {".txt", ".md", ".text", ".jsonl", ".json", ".csv", ".tsv", ".rst"}


def _is_text_file(path: Path) -> bool:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in _OPENERS:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1].lower() in _TEXT_SUFFIXES


def _read_one(path: Path, max_chars: int | None) -> str:
    opener = _OPENERS.get(path.suffix, open)
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            return fh.read(max_chars if max_chars else -1)
    except (OSError, EOFError) as e:
        raise PosttrainError(f"cannot read the text file {path}: {e}",
                             remedy="pass --text with a readable UTF-8 file (plain, .bz2, .gz or .xz)") from None


def read_text(source: str | Path, max_chars: int | None = None) -> tuple[str, list[str]]:
    """The text of FILE, or of every text file under DIR in name order; (text, files read).

    `max_chars` stops reading once that much text is in hand: a ladder needs tens of thousands of
    tokens, not a whole corpus.
    """
    source = Path(source).expanduser()
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and _is_text_file(p))
        if not files:
            raise PosttrainError(f"no text files (.txt, .md, .jsonl, … optionally .bz2/.gz/.xz) under {source}")
    else:
        raise PosttrainError(f"--text {source} does not exist", remedy="pass a text file or a folder of them")
    parts: list[str] = []
    used: list[str] = []
    have = 0
    for f in files:
        if max_chars is not None and have >= max_chars:
            break
        part = _read_one(f, None if max_chars is None else max_chars - have)
        parts.append(part)
        used.append(str(f))
        have += len(part)
    return "\n\n".join(parts), used


def text_from_items(items) -> str:
    """Held-out text made of the evaluated documents themselves (question and gold answer of each item),
    for when the user gave no --text. Each document once, in a stable order."""
    seen: set[str] = set()
    parts: list[str] = []
    for it in sorted(items, key=lambda i: (i.task, i.doc_id)):
        if it.doc_hash in seen or not it.question:
            continue
        seen.add(it.doc_hash)
        parts.append(f"{it.question} {it.target or ''}".strip())
    return "\n\n".join(parts)
