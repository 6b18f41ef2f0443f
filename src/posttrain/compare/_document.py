"""Reading `compare.json` (schema `posttrain.compare/1`) back: the one reader for the report, notify,
`status` and the runs index. A document of another schema is refused, never guessed at."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.contracts import COMPARE_SCHEMA
from posttrain.errors import PosttrainError


def read_compare(path: Path) -> dict[str, Any]:
    """The compare document at `path`, or {} when there is none (the run failed or stopped before
    compare). Unreadable, malformed or of another schema: PosttrainError naming the file."""
    if not path.exists():
        return {}
    remedy = "re-run the compare step of this run (`posttrain run` on the same checkpoint resumes it)"
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: not UTF-8, not JSON
        raise PosttrainError(f"cannot read {path}: {e}", remedy=remedy) from None
    if not isinstance(doc, dict) or doc.get("schema") != COMPARE_SCHEMA:
        schema = doc.get("schema") if isinstance(doc, dict) else None
        raise PosttrainError(f"{path} is not a compare document this posttrain reads (schema {schema!r}; "
                             f"expected {COMPARE_SCHEMA})", remedy=remedy)
    if not isinstance(doc.get("comparisons", []), list):
        raise PosttrainError(f"{path}: `comparisons` is not a list", remedy=remedy)
    return doc


def verdict_sentences(path: Path) -> list[str]:
    """The one-sentence verdicts of a run, for listings that must not fail on one damaged run."""
    try:
        doc = read_compare(path)
    except PosttrainError:
        return []
    return [c["sentence"] for c in doc.get("comparisons") or [] if isinstance(c, dict) and c.get("sentence")]
