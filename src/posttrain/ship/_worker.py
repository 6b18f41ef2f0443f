"""The child side of `posttrain.ship.run_child`: `python -m posttrain.ship._worker JOB RESULT PARENT_PID`.

A module of its own so that `python -m` does not run a module the package has already imported.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from posttrain._files import write_json_atomic
from posttrain.errors import PosttrainError


def _dispatch(job: dict) -> dict:
    if job["kind"] == "quality":
        from posttrain.ship._quality import measure_quality

        text = Path(job["text_file"]).read_text(encoding="utf-8")
        return measure_quality(job["base"], job["variants"], text, n_ctx=job["n_ctx"], max_chunks=job.get("max_chunks"),
                               n_gpu_layers=job.get("n_gpu_layers"), scratch_dir=job.get("scratch_dir"))
    if job["kind"] == "speed":
        from posttrain.ship._speed import measure_speed

        return {label: measure_speed(path, reps=job["reps"], n_gpu_layers=job.get("n_gpu_layers"))
                for label, path in job["paths"].items()}
    raise ValueError(f"unknown job kind {job['kind']!r}")


def main(argv: list[str]) -> int:
    from posttrain._child_process import child_args

    args = child_args(argv)
    if args is None:  # the parent is gone already
        return 1
    job_path, result_path = args
    job = json.loads(Path(job_path).read_text())
    try:
        write_json_atomic(Path(result_path), {"result": _dispatch(job)})
    except PosttrainError as e:
        write_json_atomic(Path(result_path), {"error": e.message, "remedy": e.remedy})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
