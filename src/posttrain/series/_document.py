"""The series report's files: series.json (the document, schema `posttrain.series/1`), series.md and
series.html, in one folder per training run under `<home>/series/`. `write_series` writes all three
together; `read_series` is the one reader of series.json."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from posttrain._files import write_texts_atomic
from posttrain.errors import PosttrainError
from posttrain.paths import model_label, safe_name
from posttrain.series._model import SERIES_SCHEMA, SeriesDoc


@dataclass(frozen=True)
class SeriesLayout:
    """`<home>/series/<name>-<hash of the folder's path>/`: two runs both called `exp1` stay apart."""

    root: Path

    @classmethod
    def for_folder(cls, home: Path, folder: Path) -> SeriesLayout:
        folder = Path(folder).resolve()
        name = safe_name(model_label(folder / "final_model")) or "series"
        digest = hashlib.sha256(str(folder).encode("utf-8")).hexdigest()[:8]
        return cls(Path(home) / "series" / f"{name}-{digest}")

    @property
    def json(self) -> Path:
        return self.root / "series.json"

    @property
    def md(self) -> Path:
        return self.root / "series.md"

    @property
    def html(self) -> Path:
        return self.root / "series.html"


def write_series(layout: SeriesLayout, doc: SeriesDoc) -> SeriesLayout:
    """All three files complete before any is renamed into place (a reader never sees a mix)."""
    from posttrain.series._render import render_html, render_markdown

    text = json.dumps(doc.model_dump(mode="json", by_alias=True), indent=2, ensure_ascii=False,
                      allow_nan=False) + "\n"
    layout.root.mkdir(parents=True, exist_ok=True)
    write_texts_atomic({layout.json: text, layout.md: render_markdown(doc), layout.html: render_html(doc)})
    return layout


def read_series(path: Path) -> SeriesDoc | None:
    """The document at `path`, None when there is none; damaged or of another schema: PosttrainError."""
    if not path.exists():
        return None
    remedy = "write it again with `posttrain series FOLDER`"
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise PosttrainError(f"cannot read {path}: {e}", remedy=remedy) from None
    if not isinstance(raw, dict) or raw.get("schema") != SERIES_SCHEMA:
        schema = raw.get("schema") if isinstance(raw, dict) else None
        raise PosttrainError(f"{path} is not a series document this posttrain reads (schema {schema!r}; "
                             f"expected {SERIES_SCHEMA})", remedy=remedy)
    try:
        return SeriesDoc.model_validate(raw)
    except ValidationError as e:
        raise PosttrainError(f"{path} is not a valid series document: {e.errors()[0]['msg']}", remedy=remedy) from None
