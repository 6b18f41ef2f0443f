"""Run a ladder measurement (quality or speed) in a child process, so a llama.cpp crash is reported.

`python -m posttrain.ship._child JOB.json RESULT.json PARENT_PID`. The child imports posttrain first
(llama.cpp before numpy), ends with its parent, and writes either the result or the PosttrainError it
met into RESULT.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from posttrain._files import read_json_file, write_json_atomic
from posttrain.errors import PosttrainError

# Generous: the wait must be bounded, yet a large model on a slow CPU is slow. Callers may pass more.
DEFAULT_TIMEOUT_S = 6 * 3600


def _dispatch(job: dict) -> dict:
    if job["kind"] == "quality":
        from posttrain.ship._quality import measure_quality

        text = Path(job["text_file"]).read_text(encoding="utf-8")
        return measure_quality(job["base"], job["variants"], text, n_ctx=job["n_ctx"], max_chunks=job.get("max_chunks"),
                               n_gpu_layers=job.get("n_gpu_layers"))
    if job["kind"] == "speed":
        from posttrain.ship._speed import measure_speed

        return {label: measure_speed(path, reps=job["reps"], n_gpu_layers=job.get("n_gpu_layers"))
                for label, path in job["paths"].items()}
    raise ValueError(f"unknown job kind {job['kind']!r}")


def run_child(job: dict, log: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Run `job` in a fresh Python process and return its result; its output goes to `log`.

    A child killed by a signal raises NativeCrash; one that times out is stopped and raises
    PosttrainError; a PosttrainError in the child comes back as the same one-line error.
    """
    import os

    from posttrain.pipeline._isolation import NativeCrash, describe_exit

    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="posttrain-ship-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        with open(log, "a") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "posttrain.ship._child", str(job_path), str(result_path),
                                     str(os.getpid())], stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
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


def main(argv: list[str]) -> int:
    from posttrain import _lifeline

    job_path, result_path, parent = argv
    if not _lifeline.die_with_parent(int(parent)):
        return 1
    job = json.loads(Path(job_path).read_text())
    try:
        write_json_atomic(Path(result_path), {"result": _dispatch(job)})
    except PosttrainError as e:
        write_json_atomic(Path(result_path), {"error": e.message, "remedy": e.remedy})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
