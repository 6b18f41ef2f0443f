"""Checkpoint series: every checkpoint a training run saved (`checkpoint-N/`, then `final_model/`),
evaluated on the same items, scored against the training step with CIs, each paired with the previous
and with the final checkpoint (the compare package's paired tests, Holm over the series), and the best
checkpoint named in one sentence. Written as series.json / series.md / series.html (docs/report.md)."""

from __future__ import annotations

import logging
from pathlib import Path

from posttrain.series._build import build_series
from posttrain.series._document import SeriesLayout, read_series, write_series
from posttrain.series._gather import gather
from posttrain.series._model import SERIES_SCHEMA, Best, Pairing, Pending, Point, Score, SeriesDoc
from posttrain.series._steps import checkpoint_step, is_intermediate
from posttrain.store import Store

log = logging.getLogger("posttrain.series")


def series_report(store: Store, home: Path, folder: Path, *, quant: str | None = None, alpha: float = 0.05,
                  seed: int = 0) -> tuple[SeriesDoc, SeriesLayout]:
    """Gather `folder`'s checkpoints from the store, build the series and write its three files."""
    folder = Path(folder).expanduser().resolve()
    doc = build_series(gather(store, folder, quant), str(folder), alpha=alpha, seed=seed)
    return doc, write_series(SeriesLayout.for_folder(home, folder), doc)


__all__ = [
    "SERIES_SCHEMA",
    "Best",
    "Pairing",
    "Pending",
    "Point",
    "Score",
    "SeriesDoc",
    "SeriesLayout",
    "build_series",
    "checkpoint_step",
    "gather",
    "is_intermediate",
    "read_series",
    "series_report",
    "write_series",
]
