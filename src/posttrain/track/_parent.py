"""Which training run a posttrain run belongs under, in MLflow.

Two ways to know it: `MLFLOW_RUN_ID` in posttrain's environment (the user's or the training job's),
or the note `PosttrainCallback` leaves in posttrain's home when training ran inside an MLflow run
(`<home>/tracking/parents/<hash of the checkpoint path>.json`: run id and tracking URI). The note
reaches a watcher as well as the `posttrain run` the callback starts, and the checkpoint itself is
never written to (its content hash names the run).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from posttrain._files import read_json_file, write_json_atomic
from posttrain.track._base import ParentRun

_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _note_path(home: Path, checkpoint: str | Path) -> Path:
    digest = hashlib.sha256(str(Path(checkpoint).resolve()).encode()).hexdigest()[:24]
    return Path(home) / "tracking" / "parents" / f"{digest}.json"


def absolute_tracking_uri(uri: str, cwd: Path | None = None) -> str:
    """A tracking URI that means the same from any working directory: a relative SQLite file or
    local path is made absolute (the run that reads it starts elsewhere: the watcher, posttrain's home)."""
    cwd = cwd or Path.cwd()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((cwd / uri.removeprefix("sqlite:///")).resolve())
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return (cwd / uri.removeprefix("file:")).resolve().as_uri()
    if not _URI_SCHEME.match(uri):
        return (cwd / uri).resolve().as_uri()
    return uri


def record_parent(home: Path, checkpoint: str | Path, run_id: str, tracking_uri: str | None) -> Path:
    """Leave the note the track step reads: `checkpoint` was trained in MLflow run `run_id`."""
    path = _note_path(home, checkpoint)
    write_json_atomic(path, {"checkpoint": str(Path(checkpoint).resolve()), "mlflow_run_id": run_id,
                             "tracking_uri": absolute_tracking_uri(tracking_uri) if tracking_uri else None})
    return path


def find_parent(home: Path, checkpoint: str | Path) -> ParentRun | None:
    """MLFLOW_RUN_ID first (set by the person or job that started posttrain), else the callback's note."""
    if run_id := os.environ.get("MLFLOW_RUN_ID", "").strip():
        return ParentRun(run_id=run_id, tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or None,
                         source="MLFLOW_RUN_ID")
    note = read_json_file(_note_path(home, checkpoint))
    if note and isinstance(note.get("mlflow_run_id"), str) and note.get("checkpoint") == str(Path(checkpoint).resolve()):
        uri = note.get("tracking_uri")
        return ParentRun(run_id=note["mlflow_run_id"], tracking_uri=uri if isinstance(uri, str) else None,
                         source="PosttrainCallback")
    return None
