"""Weights & Biases: the same record as MLflow's, offline by default (`WANDB_MODE=offline`; set it
to `online` with a `WANDB_API_KEY` to send it). Offline runs land in `<home>/wandb/` (or
`$WANDB_DIR`), and `wandb sync` uploads them later.

The W&B run id is derived from posttrain's run id, and the run is opened with `resume="allow"`, so
a rerun is the same W&B run (each offline attempt is a directory of its own that syncs into it).
Runs in the tracking child process (`_child`), so W&B's process-wide state stays there.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from posttrain.errors import PosttrainError
from posttrain.track._base import TrackedRun, Tracker, TrackRecord, register_tracker

PROJECT = "posttrain"
_MAX_TAG = 64  # W&B refuses longer tags


def wandb_run_id(posttrain_run_id: str) -> str:
    """A stable W&B id (W&B allows only some characters and lengths; posttrain's ids are longer)."""
    return "pt-" + hashlib.sha256(posttrain_run_id.encode()).hexdigest()[:20]


@register_tracker("wandb")
class WandbTracker(Tracker):
    def log(self, record: TrackRecord) -> TrackedRun:
        os.environ.setdefault("WANDB_MODE", "offline")
        try:
            import wandb
        except ImportError:
            raise PosttrainError("wandb is not installed", remedy="pip install 'posttrain[track]'") from None

        root = Path(os.environ.get("WANDB_DIR") or self.home / "wandb").resolve()
        root.mkdir(parents=True, exist_ok=True)
        tags = [t[:_MAX_TAG] for t in ("posttrain", record.status, record.tags.get("posttrain.verdict"),
                                       record.tags.get("posttrain.ship") and f"ship:{record.tags['posttrain.ship']}")
                if t]
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT, id=wandb_run_id(record.run_id), name=record.run_id,
            resume="allow", dir=str(root), job_type="posttrain", config=record.params, tags=tags,
            # A run's training job is its group, the nearest W&B has to MLflow's nesting.
            group=record.parent.run_id if record.parent else None,
            settings=wandb.Settings(console="off", silent=True, disable_git=True, save_code=False,
                                    x_disable_stats=True, disable_job_creation=True))
        where = str(Path(run.dir).parent) if run.dir else str(root)
        ok = False
        try:
            run.log(record.metrics)
            run.summary.update({**record.metrics, **record.tags})
            report = wandb.Artifact(f"posttrain-report-{run.id}", type="posttrain-report",
                                    metadata={"posttrain_run_id": record.run_id})
            for path in record.artifacts:
                report.add_file(str(path), name=path.name)
            if record.artifacts:
                run.log_artifact(report)
            if record.models:
                models = wandb.Artifact(f"posttrain-gguf-{run.id}", type="model")
                for path in record.models:
                    models.add_file(str(path), name=path.name)
                run.log_artifact(models)
            ok = True
        finally:
            run.finish(exit_code=0 if ok else 1)
        mode = os.environ.get("WANDB_MODE", "offline")
        return TrackedRun(run=run.id, where=where, note=f"{mode} run {run.id}")
