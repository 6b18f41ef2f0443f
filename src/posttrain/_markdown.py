"""Outside text (task names, folder names, sentences) made safe inside a Markdown table cell: the
report's and the series' Markdown escape it the same way."""

from __future__ import annotations

import re
from typing import Any

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*[]|~"} | {
    "<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": " ", "\r": " "})
# GFM never emphasises inside a word, so Q4_K_M stays readable; only word-edge underscores are escaped.
_MD_UNDERSCORE = re.compile(r"(?<!\w)_|_(?!\w)")


def md_escape(text: Any) -> str:
    """Text safe inside a Markdown table cell: no HTML, no emphasis, no links, no cell breaks."""
    return "" if text is None else _MD_UNDERSCORE.sub(r"\_", str(text).translate(_MD_SPECIAL))
