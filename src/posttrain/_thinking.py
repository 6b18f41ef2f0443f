"""Reasoning text (`<think>…</think>` and its spellings) cut out of model output, keeping only a hash.

One implementation for the two places that need it: evaluate strips it before lm-eval's filters
score a generation, and the report strips it again before showing any model text (in case a
producer forgot). Only the sha256 of what was removed is kept: two runs can be told apart, and
nothing of the reasoning is stored or shown.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

_TAGS = "think|thinking|reasoning"
DEFAULT_THINK_PATTERNS = [
    rf"(?si)<({_TAGS})>.*?</\1>",
    # Chat templates that open the block in the prompt: the generation starts inside it.
    rf"(?si)\A.*?</(?:{_TAGS})>",
    # Ran out of tokens while still thinking: everything after the opening tag is reasoning.
    rf"(?si)<(?:{_TAGS})>.*\Z",
]


def strip_think(text: str, patterns: Iterable[str] | None = None) -> tuple[str, str | None]:
    """(text without the reasoning parts, sha256 of the removed parts or None when nothing matched)."""
    removed: list[str] = []

    def cut(m: re.Match) -> str:
        removed.append(m.group(0))
        return ""

    for pattern in DEFAULT_THINK_PATTERNS if patterns is None else patterns:
        text = re.sub(pattern, cut, text)
    if not removed:
        return text, None
    return text.lstrip(), hashlib.sha256("".join(removed).encode("utf-8")).hexdigest()
