"""Steps that load native code (llama.cpp, torch) run in a child process, under supervision.

A segfault or an illegal instruction inside a native library kills the process it happens in, with
no Python exception to catch. Run in the watcher itself, it would take the watcher down without a
word (issue 10: an AMX fault in llama.cpp did exactly that). In a child (started and watched the
way every isolated piece is: `posttrain._child_process`), the parent sees how the child ended, names the signal and the step's log, and carries on: the runner retries the step once,
the watcher takes the next checkpoint.

The hand-over is two files in `<run_dir>/.steps/`: the job (the step's function and what it sees,
pickled: the same user, the same machine) and the result (JSON, written atomically by the child).
The child's stdout and stderr, llama.cpp's own log lines included, go to `<run_dir>/logs/<step>.log`.
A stop asked for while the child runs (`posttrain stop`) reaches it as a third file, `<step>.stop`,
which the child polls (a file: the one way that works on every OS), so a step that can stop early
(units on a cluster) does so.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain._child_process import run_module
from posttrain.contracts import RunLayout

CHILD_MODULE = "posttrain.pipeline._step_child"
# A test-only hook (see _step_child): makes a step's child crash in native code.
CRASH_HOOK_ENV = "POSTTRAIN_TEST_CRASH"


@dataclass
class StepJob:
    """Everything the child needs to run one attempt of one step (pickled)."""

    step: str
    run: Callable[[Any], Any]  # the step's function: RunContext → its outputs record
    spec: Any  # RunSpec
    store_path: Path
    outputs: dict[str, Any]  # the dependencies' outputs, typed (they pickle)
    step_status: dict[str, tuple[str, str | None]]
    transient: tuple[type[BaseException], ...]
    attempt: int
    stop_path: str | None = None  # appears when the parent is asked to stop (`run_in_child(stop_event=)`)


@dataclass
class ChildOutcome:
    result: dict[str, Any]
    peak_rss_bytes: int
    gpu_mem_bytes: int | None


def run_in_child(job: StepJob, run_dir: Path, stop_event: threading.Event | None = None) -> ChildOutcome:
    """Run one attempt of `job.step` in a fresh Python process and wait for it (however long the step
    takes: the child's liveness, not a timeout, bounds the wait). Raises NativeCrash when the child
    dies from a signal, PosttrainError when it exits without a result. Once `stop_event` is set the
    child is told through its stop file; it decides whether it can end early."""
    layout = RunLayout(run_dir)
    work = layout.step_jobs
    work.mkdir(parents=True, exist_ok=True)
    job_path, result_path = work / f"{job.step}.job.pkl", work / f"{job.step}.result.json"
    stop_path = work / f"{job.step}.stop"
    job.stop_path = str(stop_path)
    with open(job_path, "wb") as fh:
        pickle.dump(job, fh)
    try:
        ended = run_module(CHILD_MODULE, [job_path, result_path], log=layout.step_log(job.step), result=result_path,
                           header=f"step {job.step}, attempt {job.attempt}", stop_event=stop_event,
                           stop_file=stop_path, measure_rss=True)
    finally:
        job_path.unlink(missing_ok=True)
    result = ended.result_or_raise(job.step)
    return ChildOutcome(result, ended.peak_rss_bytes, result.get("gpu_mem_bytes"))


def crash_hook_matches(spec: str | None, step: str, attempt: int, checkpoint: str) -> bool:
    """`POSTTRAIN_TEST_CRASH=STEP[:N][@TEXT]`: crash STEP in its first N attempts (default: every one)
    when TEXT is part of the checkpoint's path (default: any checkpoint)."""
    if not spec:
        return False
    head, _, text = spec.partition("@")
    name, _, count = head.partition(":")
    if name.strip() != step or (text and text not in checkpoint):
        return False
    return not count or attempt <= int(count)
