"""Experiment tracking: each posttrain run recorded in MLflow (a local store by default) and/or
Weights & Biases (offline by default), next to the training run it came from.

`track_finished_run` reads a finished run's files into a `TrackRecord` (params, metrics, tags,
artifacts) and hands it to every chosen tracker, each in a child process, retried; it never raises
for a tracker's sake and writes the outcomes to `<run_dir>/track.json`. A backend is a `Tracker`
subclass in a module of its own, registered with `@register_tracker("name")`.
"""

from posttrain.track._base import (
    ARTIFACT_KINDS,
    ParentRun,
    TrackedRun,
    Tracker,
    TrackRecord,
    get_tracker,
    register_tracker,
    tracker_names,
)
from posttrain.track._dispatch import TRACK_SCHEMA, read_tracking, send, track_finished_run
from posttrain.track._parent import absolute_tracking_uri, find_parent, record_parent
from posttrain.track._record import build_record

__all__ = [
    "ARTIFACT_KINDS",
    "TRACK_SCHEMA",
    "ParentRun",
    "TrackRecord",
    "TrackedRun",
    "Tracker",
    "absolute_tracking_uri",
    "build_record",
    "find_parent",
    "get_tracker",
    "read_tracking",
    "record_parent",
    "register_tracker",
    "send",
    "track_finished_run",
    "tracker_names",
]
