"""The tracker interface: what one posttrain run hands to an experiment tracker, and the registry of
backends (one module each, registered with `@register_tracker`).

A backend gets a finished `TrackRecord` and writes it to its tracker; it must be idempotent (a rerun
of the same posttrain run finds the tracker's run it made before, by `record.run_id`, and updates
it), because the dispatcher retries it and a resumed pipeline calls it again.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field

# Backend modules, imported on demand so that listing the names costs no mlflow or wandb import.
BACKEND_MODULES = ("posttrain.track._mlflow", "posttrain.track._wandb")
# Opt-in artifact kinds on top of the run's reports and documents (which are always sent).
ARTIFACT_KINDS = ("gguf",)

_REGISTRY: dict[str, type[Tracker]] = {}


class ParentRun(BaseModel):
    """The training run posttrain's run belongs under (an MLflow run id, and where that run lives)."""

    run_id: str
    tracking_uri: str | None = None
    source: str = ""  # how it was found: "MLFLOW_RUN_ID", "PosttrainCallback"


class TrackRecord(BaseModel):
    """One posttrain run as a tracker sees it. Names are already tracker-safe (see `_record`)."""

    run_id: str
    name: str
    status: str  # the run's outcome: succeeded | failed
    params: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    artifacts: list[Path] = Field(default_factory=list)  # reports, compare.json, manifest.json
    models: list[Path] = Field(default_factory=list)  # GGUF files, only when asked for
    report_html: Path | None = None
    parent: ParentRun | None = None


class TrackedRun(BaseModel):
    """Where a backend put the record: its run id there and a place a person can open."""

    run: str
    where: str
    note: str = ""


class Tracker(ABC):
    """A tracker backend. `home` is posttrain's base directory (for local stores)."""

    name: ClassVar[str]

    def __init__(self, home: Path):
        self.home = Path(home)

    @abstractmethod
    def log(self, record: TrackRecord) -> TrackedRun:
        """Write `record`; create the tracker's run, or update the one an earlier attempt made."""


def register_tracker(name: str) -> Callable[[type[Tracker]], type[Tracker]]:
    def register(cls: type[Tracker]) -> type[Tracker]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def _load_backends() -> None:
    for module in BACKEND_MODULES:
        importlib.import_module(module)


def tracker_names() -> list[str]:
    _load_backends()
    return sorted(_REGISTRY)


def get_tracker(name: str) -> type[Tracker]:
    _load_backends()
    return _REGISTRY[name]
