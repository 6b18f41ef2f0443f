"""MLflow: one MLflow run per posttrain run, found again by its `posttrain.run_id` tag.

Where: `MLFLOW_TRACKING_URI` when set, else the store of the training run it nests under, else a
local SQLite store in posttrain's home (`<home>/mlruns/mlflow.db`, artifacts beside it). MLflow's
file store is in maintenance mode and refuses to start by default, hence SQLite.

Runs in the tracking child process (`_child`), so the HTTP settings below change nothing else.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from posttrain.errors import PosttrainError
from posttrain.track._base import TrackedRun, Tracker, TrackRecord, register_tracker

EXPERIMENT = "posttrain"
RUN_TAG = "posttrain.run_id"
# MLflow's own batch limits (log_batch): more in one call is refused.
_BATCH = {"metrics": 1000, "params": 100, "tags": 100}


def local_store(home: Path) -> tuple[str, str]:
    """The default store: (tracking URI, artifact location) under `<home>/mlruns`."""
    root = (Path(home) / "mlruns").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


@register_tracker("mlflow")
class MlflowTracker(Tracker):
    def _where(self, record: TrackRecord) -> tuple[str, str | None]:
        if uri := os.environ.get("MLFLOW_TRACKING_URI"):
            return uri, None
        if record.parent is not None and record.parent.tracking_uri:
            return record.parent.tracking_uri, None
        return local_store(self.home)

    def log(self, record: TrackRecord) -> TrackedRun:
        # posttrain retries (tenacity) and bounds the whole attempt; MLflow's own HTTP retries would
        # otherwise back off for minutes against a server that is down.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.exceptions import MlflowException
        except ImportError:
            raise PosttrainError("MLflow is not installed", remedy="pip install 'posttrain[track]'") from None

        uri, artifact_location = self._where(record)
        client = MlflowClient(tracking_uri=uri)
        notes: list[str] = []
        parent_id, experiment_id = None, None
        if record.parent is not None:
            try:
                experiment_id = client.get_run(record.parent.run_id).info.experiment_id
                parent_id = record.parent.run_id
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                notes.append(f"parent run {record.parent.run_id} ({record.parent.source}) not found at {uri}; "
                             "logged as a top-level run")
        if experiment_id is None:
            experiment_id = self._experiment(client, artifact_location, MlflowException)

        quoted = record.run_id.replace("'", "\\'")
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{quoted}'", max_results=1)
        tags = {**record.tags, RUN_TAG: record.run_id, "mlflow.source.name": "posttrain"}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        if found:
            run = found[0]
            client.update_run(run.info.run_id, status="RUNNING")
        else:
            run = client.create_run(experiment_id, run_name=record.run_id, tags=tags)
        run_id = run.info.run_id

        # A param is what the run was made from, and MLflow never changes one: a rerun adds new ones
        # and says which differ instead of failing.
        have = run.data.params
        changed = sorted(k for k, v in record.params.items() if k in have and have[k] != v)
        if changed:
            notes.append("params kept from the first tracking, now different: " + ", ".join(changed))
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, 0) for k, v in sorted(record.metrics.items())]
        params = [Param(k, v) for k, v in sorted(record.params.items()) if k not in have]
        run_tags = [RunTag(k, v) for k, v in sorted(tags.items())]
        for chunk in _chunks(metrics, _BATCH["metrics"]):
            client.log_batch(run_id, metrics=chunk)
        for chunk in _chunks(params, _BATCH["params"]):
            client.log_batch(run_id, params=chunk)
        for chunk in _chunks(run_tags, _BATCH["tags"]):
            client.log_batch(run_id, tags=chunk)
        for path in record.artifacts:  # same name, same place: a rerun replaces, never duplicates
            client.log_artifact(run_id, str(path))
        for path in record.models:
            client.log_artifact(run_id, str(path), artifact_path="gguf")
        client.set_terminated(run_id, "FINISHED" if record.status == "succeeded" else "FAILED")
        action = "updated" if found else "created"
        return TrackedRun(run=run_id, where=f"{uri} (experiment {experiment_id})",
                          note="; ".join([f"{action} run {run_id}", *notes]))

    @staticmethod
    def _experiment(client: Any, artifact_location: str | None, error: type[Exception]) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except error:  # another run created it a moment ago
            again = client.get_experiment_by_name(name)
            if again is None:
                raise
            return again.experiment_id
