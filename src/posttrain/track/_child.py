"""The tracking child: one tracker, one record, retried; the result as JSON.

`python -m posttrain.track._child JOB RESULT PARENT_PID`

Each tracker runs in a process of its own (see `_dispatch`): its libraries' process-wide state (W&B's
run, MLflow's HTTP settings) stays out of the runner and the watcher, a hang is cut off by a
timeout, and a crash is one failed tracking, not a failed run.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_not_exception_type, stop_after_attempt, wait_exponential

from posttrain._child_process import child_args
from posttrain._files import read_json_file, write_json_atomic
from posttrain.errors import PosttrainError
from posttrain.track._base import TrackedRun, TrackRecord, get_tracker

log = logging.getLogger("posttrain.track")


def _attempt_logged(retry_state) -> None:
    outcome = retry_state.outcome
    if outcome is not None and outcome.failed:
        log.warning("attempt %d failed: %s", retry_state.attempt_number, outcome.exception())


def track_with_retries(job: dict[str, Any], attempts: list[int]) -> TrackedRun:
    """The job's tracker writes its record; `attempts` gets one entry per try."""
    tracker = get_tracker(job["tracker"])(Path(job["home"]))
    record = TrackRecord.model_validate(job["record"])

    def attempt() -> TrackedRun:
        attempts.append(len(attempts) + 1)
        return tracker.log(record)

    return Retrying(
        stop=stop_after_attempt(max(1, int(job.get("attempts", 3)))),
        wait=wait_exponential(multiplier=float(job.get("backoff_s", 2.0)), max=30),
        # Something the user must fix (a missing package) does not pass by waiting.
        retry=retry_if_not_exception_type(PosttrainError), reraise=True, after=_attempt_logged,
    )(attempt)


def main(argv: list[str]) -> int:
    args = child_args(argv)
    if args is None:  # the parent is gone already
        return 1
    job_file, result_file = args
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s tracking: %(message)s")
    job = read_json_file(job_file) or {}
    attempts: list[int] = []
    t0 = time.monotonic()
    result: dict[str, Any] = {"tracker": job.get("tracker"), "ok": False}
    try:
        done = track_with_retries(job, attempts)
        result.update(ok=True, run=done.run, where=done.where, note=done.note)
    except Exception as e:  # noqa: BLE001 - every failure goes back to the parent, described
        traceback.print_exc()
        text = e.one_line() if isinstance(e, PosttrainError) else f"{type(e).__name__}: {e}"
        result["error"] = " ".join(text.split())[:500]
    result.update(attempts=len(attempts), seconds=round(time.monotonic() - t0, 3))
    write_json_atomic(result_file, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
