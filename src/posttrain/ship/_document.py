"""`ship.json` (schema `posttrain.ship/1`): the ladder's document, its one writer and its one reader.

`posttrain ship` writes it into --out, the pipeline's ship step into the run's folder; the run's
report reads it from there (`RunLayout.ship_json`) to open with the pick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain._files import read_json_file, write_json_atomic
from posttrain.contracts import SHIP_SCHEMA
from posttrain.errors import PosttrainError

SHIP_JSON = "ship.json"


def write_ship(out_dir: Path, doc: dict[str, Any]) -> Path:
    """Write (atomically) `doc`, a ship document, as `out_dir/ship.json`; returns its path."""
    path = Path(out_dir) / SHIP_JSON
    write_json_atomic(path, doc)
    return path


def read_ship(path: Path) -> dict[str, Any]:
    """The ship document at `path`, or {} when there is none (the run measured no ladder). Anything
    else under that name (another schema, no verdict) is refused in one line naming the file."""
    if not path.exists():
        return {}
    doc = read_json_file(path)
    if not isinstance(doc, dict) or doc.get("schema") != SHIP_SCHEMA or not isinstance(doc.get("verdict"), dict):
        raise PosttrainError(f"{path} is not a ship document ({SHIP_SCHEMA})", remedy="re-run the ship step")
    return doc
