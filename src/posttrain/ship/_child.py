"""Run a ladder measurement (quality or speed) in a child process, so a llama.cpp crash is reported.

The child is `python -m posttrain.ship._worker JOB.json RESULT.json PARENT_PID`, started and watched
the way every isolated piece is (`posttrain._child_process`): it imports posttrain first (llama.cpp
before numpy), ends with its parent, and writes either the result or the PosttrainError it met into
RESULT.json.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from posttrain._child_process import run_module
from posttrain.errors import PosttrainError

# Generous: the wait must be bounded, yet a large model on a slow CPU is slow. Callers may pass more.
DEFAULT_TIMEOUT_S = 6 * 3600


def run_child(job: dict, log: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Run `job` in a fresh Python process and return its result; its output goes to `log`.

    A child killed by a signal raises NativeCrash; one that times out is stopped and raises
    PosttrainError; a PosttrainError in the child comes back as the same one-line error.
    """
    with tempfile.TemporaryDirectory(prefix="posttrain-ship-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        ended = run_module("posttrain.ship._worker", [job_path, result_path], log=log, result=result_path,
                           timeout_s=timeout_s)
    if ended.timed_out:
        raise PosttrainError(f"the {job['kind']} measurement took longer than {timeout_s:.0f} s and was "
                             f"stopped; log: {log}", remedy="use fewer chunks (--max-chunks) or variants")
    ended.raise_if_crashed(f"ship {job['kind']}")
    result = ended.result_or_raise(f"the {job['kind']} measurement")
    if "error" in result:
        raise PosttrainError(result["error"], remedy=result.get("remedy"))
    return result["result"]
