"""The child side of `_isolation`: run one attempt of one step and write its result.

`python -m posttrain.pipeline._step_child JOB RESULT PARENT_PID`

`import posttrain` (which running this module does first) loads llama.cpp before numpy and torch
and makes its loads AMX-safe (`posttrain.llamacpp`). The child ends with its parent, however the
parent ends (`posttrain._child_process.child_args`): a watcher killed with SIGKILL leaves no step
running on alone.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time
import traceback
from typing import Any

_STOP_POLL_S = 0.2
RESULT_UNWRITTEN = "the step's result could not be written: "


def _describe(exc: BaseException) -> dict[str, Any]:
    from posttrain.errors import PosttrainError

    if isinstance(exc, PosttrainError):
        return {"message": exc.message, "remedy": exc.remedy}
    text = str(exc).strip().replace("\n", " ")
    return {"message": f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__, "remedy": None}


def _crash_for_test(job) -> None:
    """The test-only hook: a real segfault in C, so the parent sees exactly what a native fault looks like."""
    from posttrain.pipeline._isolation import CRASH_HOOK_ENV, crash_hook_matches

    if crash_hook_matches(os.environ.get(CRASH_HOOK_ENV), job.step, job.attempt, str(job.spec.checkpoint)):
        import faulthandler

        print(f"{CRASH_HOOK_ENV}: crashing step {job.step} (attempt {job.attempt}) on purpose", flush=True)
        faulthandler._sigsegv()


def _watch_stop_file(path: str | None, stop: threading.Event) -> None:
    """Set `stop` when the parent writes the stop file (it was asked to stop: `posttrain stop`)."""
    if not path:
        return

    def poll() -> None:
        while not stop.is_set():
            if os.path.exists(path):
                log = logging.getLogger("posttrain.pipeline")
                log.info("stop requested by the runner: ending this step early where it can (resumable)")
                stop.set()
                return
            time.sleep(_STOP_POLL_S)

    threading.Thread(target=poll, name="stop-file", daemon=True).start()


def main(argv: list[str]) -> int:
    import posttrain  # noqa: F401  (llama.cpp first; see the docstring)
    from posttrain._child_process import child_args
    from posttrain._files import write_json_atomic
    from posttrain.errors import Interrupted
    from posttrain.pipeline._runner import RunContext, StepSkipped
    from posttrain.pipeline._resources import gpu_peak
    from posttrain.store import Store

    args = child_args(argv)
    if args is None:  # the parent is gone already
        return 1
    job_path, result_path = args
    from posttrain import _progress

    _progress.report_to_parent()  # counts for the display of `posttrain run` / `demo`, when one follows
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(process)d] %(message)s")
    with open(job_path, "rb") as fh:
        job = pickle.load(fh)
    _crash_for_test(job)
    store = None
    try:
        # Opened inside the try: a store that cannot be written (a full disk) is this step's failure,
        # described to the parent like any other.
        store = Store(job.store_path)
        ctx = RunContext(job.spec, store, job.outputs, job.step_status, threading.Event())
        _watch_stop_file(getattr(job, "stop_path", None), ctx.stop_requested)
        from posttrain.contracts import encode_outputs

        # The parent reads them back as the step's declared type (and refuses a step that returned another).
        result: dict[str, Any] = {"ok": True, "outputs": encode_outputs(job.run(ctx))}  # written as JSON below
    except StepSkipped as e:
        result = {"ok": False, "skipped": True, "message": e.reason}
    except Interrupted as e:
        result = {"ok": False, "skipped": False, "interrupted": True, **_describe(e)}
    except Exception as e:  # noqa: BLE001 - every failure goes back to the parent, described
        traceback.print_exc()
        result = {"ok": False, "skipped": False, "transient": isinstance(e, job.transient), **_describe(e)}
    finally:
        if store is not None:
            store.close()
    result["gpu_mem_bytes"] = gpu_peak()
    try:
        write_json_atomic(result_path, result)
    except OSError as e:
        # The parent then finds no result; it quotes the log's last line, so this one says why.
        print(f"{RESULT_UNWRITTEN}{_describe(e)['message']}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
