"""Run a ladder measurement (quality or speed) in a child process, so a llama.cpp crash is reported.

The child is `python -m posttrain.ship._worker JOB.json RESULT.json PARENT_PID`: it imports posttrain
first (llama.cpp before numpy), ends with its parent, and writes either the result or the
PosttrainError it met into RESULT.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from posttrain._files import read_json_file
from posttrain.errors import PosttrainError
from posttrain._lifeline import no_window_kwargs

# Generous: the wait must be bounded, yet a large model on a slow CPU is slow. Callers may pass more.
DEFAULT_TIMEOUT_S = 6 * 3600


def run_child(job: dict, log: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Run `job` in a fresh Python process and return its result; its output goes to `log`.

    A child killed by a signal raises NativeCrash; one that times out is stopped and raises
    PosttrainError; a PosttrainError in the child comes back as the same one-line error.
    """
    import os

    from posttrain.llamacpp import describe_exit
    from posttrain.errors import NativeCrash

    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="posttrain-ship-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        with open(log, "a") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "posttrain.ship._worker", str(job_path), str(result_path),
                                     str(os.getpid())], stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    **no_window_kwargs())
            try:
                code = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise PosttrainError(f"the {job['kind']} measurement took longer than {timeout_s:.0f} s and was "
                                     f"stopped; log: {log}", remedy="use fewer chunks (--max-chunks) or variants") from None
        how = describe_exit(code)
        if how is not None:
            raise NativeCrash(f"ship {job['kind']}", how, log)
        result = read_json_file(result_path) if result_path.exists() else None
    if not isinstance(result, dict):
        raise PosttrainError(f"the {job['kind']} measurement exited with code {code} without a result; log: {log}")
    if "error" in result:
        raise PosttrainError(result["error"], remedy=result.get("remedy"))
    return result["result"]
