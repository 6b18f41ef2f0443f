"""Ollama model names: `{model}_{quant}:latest`, made safe for Ollama's name rules.

Ollama (types/model/name.go) accepts a model part of 1–80 bytes (older releases: 2–80) whose first
byte is a letter, digit or underscore (older: letter or digit) and whose other bytes are letters,
digits, `_`, `-` or `.`, with no `..`; the tag part follows the same rules; names compare
case-insensitively. posttrain aims at the intersection of old and new rules, lowercased, so that a
name it prints is the name every Ollama release stores.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_PART = 80
MIN_PART = 2
DEFAULT_TAG = "latest"

_NOT_ALLOWED = re.compile(r"[^a-z0-9_.-]+")
_PUNCT_RUN = re.compile(r"[._-]{2,}")


def sanitize_part(raw: str, *, max_len: int = MAX_PART, fallback: str = "model") -> str:
    """One name part (model or tag) lowercased and reduced to what Ollama accepts.

    Unicode letters are folded to ASCII where they have an ASCII base (`é` → `e`); everything else
    outside `[a-z0-9_.-]` (spaces, slashes, `..`) becomes `-`. A part that had to be shortened keeps
    a short hash of the original, so two long names that differ only at the end stay distinct.
    """
    folded = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii").lower()
    text = _NOT_ALLOWED.sub("-", folded)
    # Runs like "../" or "-_-" carry no meaning and ".." is rejected outright; keep the first mark.
    text = _PUNCT_RUN.sub(lambda m: m.group(0)[0], text)
    text = text.strip("._-")
    if len(text) < MIN_PART:
        text = f"{fallback}-{text}" if text else fallback
    if len(text) > max_len:
        digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        text = text[: max_len - len(digest) - 1].rstrip("._-") + "-" + digest
    return text


def variant_name(model: str, quant: str, tag: str = DEFAULT_TAG) -> str:
    """`{model}_{quant}:{tag}`, each part within Ollama's rules; the quant suffix is never cut off."""
    quant_part = sanitize_part(quant, fallback="q")
    model_part = sanitize_part(model, max_len=MAX_PART - len(quant_part) - 1)
    return f"{model_part}_{quant_part}:{sanitize_part(tag, fallback=DEFAULT_TAG)}"


def full_name(name: str) -> str:
    """A user-given `name[:tag]` made valid, `:latest` added when no tag is given."""
    base, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        base, tag = name, DEFAULT_TAG
    return f"{sanitize_part(base)}:{sanitize_part(tag, fallback=DEFAULT_TAG)}"


_VALID = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,79}$")


def is_valid_part(part: str) -> bool:
    """True when `part` meets the rules above (used by tests and by the stand-in server)."""
    return bool(_VALID.match(part)) and ".." not in part
