"""Send a run's record to each tracker the user chose, each in a child process with a time limit,
and keep what happened in `<run_dir>/track.json` (the report and the notification read it).

Tracking never fails a run: whatever goes wrong (the tracker down after every retry, a missing
package, a hang, a crash, a record that cannot be read) becomes a failed outcome with its reason.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from posttrain._child_process import run_module
from posttrain._files import read_json_file, write_json_atomic
from posttrain.contracts import RunLayout
from posttrain.store import Store
from posttrain.track._base import TrackRecord
from posttrain.track._parent import find_parent
from posttrain.track._record import build_record

log = logging.getLogger("posttrain.track")

TRACK_SCHEMA = "posttrain.track/1"
CHILD_MODULE = "posttrain.track._child"
DEFAULT_TIMEOUT_S = 600.0


def _failed(tracker: str, error: str, **extra: Any) -> dict[str, Any]:
    return {"tracker": tracker, "ok": False, "error": error, **extra}


def send(record: TrackRecord, tracker: str, *, home: Path, run_dir: Path, attempts: int, backoff_s: float,
         timeout_s: float) -> dict[str, Any]:
    """One tracker, in a child process; its outcome {tracker, ok, run, where, note | error, attempts}."""
    layout = RunLayout(run_dir)
    layout.step_jobs.mkdir(parents=True, exist_ok=True)
    job, result = layout.step_jobs / f"track-{tracker}.job.json", layout.step_jobs / f"track-{tracker}.result.json"
    write_json_atomic(job, {"tracker": tracker, "home": str(home), "record": record.model_dump(mode="json"),
                            "attempts": attempts, "backoff_s": backoff_s})
    t0 = time.monotonic()
    try:
        ended = run_module(CHILD_MODULE, [job, result], log=layout.step_log("track"), result=result,
                           header=f"tracker {tracker}", timeout_s=timeout_s)
    finally:
        job.unlink(missing_ok=True)
    # Not ended.result_or_raise: tracking never fails a run, so a hang or a crash is a failed outcome.
    if ended.timed_out:
        return _failed(tracker, f"no answer within {timeout_s:g} s (stopped); log: {ended.log}",
                       seconds=round(time.monotonic() - t0, 3))
    if ended.result is None:
        return _failed(tracker, f"the tracking process ended with code {ended.returncode} and no result; "
                                f"log: {ended.log}", seconds=round(time.monotonic() - t0, 3))
    return ended.result


def track_finished_run(store: Store, run: dict[str, Any], steps: list[dict[str, Any]], *, outcome: str,
                       trackers: list[str], home: Path, artifacts: list[str] | tuple[str, ...] = (),
                       attempts: int = 3, backoff_s: float = 2.0,
                       timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    """Track run `run` (its `runs` row; `steps`: its step rows) in every tracker of `trackers`; write
    `<run_dir>/track.json` and return the outcomes. Never raises for a tracker's sake."""
    run_dir = Path(run["run_dir"])
    try:
        parent = find_parent(home, run["checkpoint"])
        record = build_record(store, run, steps, outcome=outcome, artifacts=artifacts, parent=parent)
    except Exception as e:  # noqa: BLE001 - a record that cannot be read is a tracking failure, not a run failure
        log.exception("run %s: could not gather the record to track", run.get("id"))
        outcomes = [_failed(t, f"could not read the run's record: {type(e).__name__}: {e}") for t in trackers]
    else:
        outcomes = []
        for t in trackers:
            try:
                outcomes.append(send(record, t, home=home, run_dir=run_dir, attempts=attempts, backoff_s=backoff_s,
                                     timeout_s=timeout_s))
            except Exception as e:  # noqa: BLE001 - e.g. no room for the job file, no process to start
                log.exception("run %s: could not start tracking in %s", run.get("id"), t)
                outcomes.append(_failed(t, f"could not start: {type(e).__name__}: {e}"))
    for o in outcomes:
        if o.get("ok"):
            log.info("run %s: tracked in %s: %s", run.get("id"), o["tracker"], o.get("note") or o.get("run"))
        else:
            log.warning("run %s: tracking in %s failed: %s", run.get("id"), o["tracker"], o.get("error"))
    try:
        write_json_atomic(RunLayout(run_dir).track_json, {"schema": TRACK_SCHEMA, "outcomes": outcomes})
    except OSError:
        log.exception("run %s: could not write %s", run.get("id"), RunLayout(run_dir).track_json)
    return outcomes


def read_tracking(run_dir: Path) -> list[dict[str, Any]]:
    """The outcomes of the run's last tracking ([] when it was never tracked)."""
    doc = read_json_file(RunLayout(run_dir).track_json)
    if not doc or doc.get("schema") != TRACK_SCHEMA or not isinstance(doc.get("outcomes"), list):
        return []
    return [o for o in doc["outcomes"] if isinstance(o, dict) and isinstance(o.get("tracker"), str)]
