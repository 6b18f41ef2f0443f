"""lm-eval's own output files (`results_<date>.json`, `samples_<task>_<date>.jsonl`), written by its
EvaluationTracker and placed whole.

The tracker writes straight into its folder (`write_text`, appends for samples) and swallows its own
errors with a log line. A kill or a full disk in the middle would leave a torn file beside the
complete ones, and a tool that reads the newest run of the folder would take it. So the tracker
writes into a hidden staging folder beside the final one; each file is then moved into place with
one rename (whole or absent), and a file the tracker could not write is an error that names it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from posttrain.errors import PosttrainError

_STAGING_PREFIX = ".lm_eval-"
_STAGING_SUFFIX = ".partial"


def save_lm_eval_files(tracker, runs: list[tuple[dict, dict]], root: Path) -> None:
    """The merged results of `runs` (one per task) and each task's samples, under `root/<model>/`,
    as lm-eval itself lays them out (one date id for all tasks of the call)."""
    merged: dict = {}
    samples: dict = {}
    for res, task_samples in runs:
        for key, value in res.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged.setdefault(key, value)
        samples.update(task_samples)
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(root.parent)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f"{_STAGING_PREFIX}{os.getpid()}-",
                                    suffix=_STAGING_SUFFIX))
    final_output = tracker.output_path
    try:
        tracker.output_path = str(staging)
        tracker.save_results_aggregated(results=merged, samples=samples)
        leaves = [leaf for leaf in merged.get("configs", {}) if leaf in samples]
        for leaf in leaves:
            tracker.save_results_samples(task_name=leaf, samples=samples[leaf])
        model = str(tracker.general_config_tracker.model_name_sanitized)
        date_id = getattr(tracker, "date_id", "*")  # set only once the results file was begun
        expected = [f"results_{date_id}.json", *(f"samples_{leaf}_{date_id}.jsonl" for leaf in leaves)]
        counts = {f"samples_{leaf}_{date_id}.jsonl": len(samples[leaf]) for leaf in leaves}
        torn = next((name for name in expected if not _whole(staging / model / name, counts.get(name))), None)
        if torn is not None:  # the tracker logged its error and went on: name the file, place none of them
            raise PosttrainError(f"lm-eval could not write {root / model / torn} (a full disk or an I/O error)",
                                 remedy="free space; the scores are stored (the report has them), only lm-eval's own copy is missing")
        (root / model).mkdir(parents=True, exist_ok=True)
        # Samples first, the results file last: a reader that finds the results finds their samples.
        for name in [*expected[1:], expected[0]]:
            os.replace(staging / model / name, root / model / name)
    finally:
        tracker.output_path = final_output
        shutil.rmtree(staging, ignore_errors=True)


def _whole(path: Path, lines: int | None) -> bool:
    """The results file parses as JSON; a samples file has one parsable JSON line per sample."""
    try:
        if lines is None:
            json.loads(path.read_text(encoding="utf-8"))
            return True
        with open(path, encoding="utf-8") as f:
            rows = f.read().splitlines()
        return len(rows) == lines and all(json.loads(row) is not None for row in rows[-1:])
    except (OSError, ValueError):
        return False


def remove_abandoned_staging(folder: Path) -> None:
    """Staging folders of processes that are gone (killed while saving): never read, only removed."""
    import psutil

    if not folder.is_dir():
        return
    for entry in folder.glob(f"{_STAGING_PREFIX}*{_STAGING_SUFFIX}"):
        pid = entry.name[len(_STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
