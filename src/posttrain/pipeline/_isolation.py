"""Steps that load native code (llama.cpp, torch) run in a child process, under supervision.

A segfault or an illegal instruction inside a native library kills the process it happens in, with
no Python exception to catch. Run in the watcher itself, it would take the watcher down without a
word (issue 10: an AMX fault in llama.cpp did exactly that). In a child, the parent sees how the
child ended, names the signal and the step's log, and carries on: the runner retries the step once,
the watcher takes the next checkpoint.

The hand-over is two files in `<run_dir>/.steps/`: the job (the step's function and what it sees,
pickled: the same user, the same machine) and the result (JSON, written atomically by the child).
The child's stdout and stderr, llama.cpp's own log lines included, go to `<run_dir>/logs/<step>.log`.
A stop asked for while the child runs (`posttrain stop`) reaches it as a third file, `<step>.stop`,
which the child polls (a file: the one way that works on every OS), so a step that can stop early
(units on a cluster) does so.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from posttrain._files import read_json_file
from posttrain.llamacpp import describe_exit, was_interrupted
from posttrain.contracts import RunLayout
from posttrain.pipeline._resources import tree_rss
from posttrain.errors import NativeCrash, PosttrainError
from posttrain._lifeline import no_window_kwargs

CHILD_MODULE = "posttrain.pipeline._step_child"
# A test-only hook (see _step_child): makes a step's child crash in native code.
CRASH_HOOK_ENV = "POSTTRAIN_TEST_CRASH"
_POLL_S = 0.1
_TERMINATE_GRACE_S = 10.0

@dataclass
class StepJob:
    """Everything the child needs to run one attempt of one step (pickled)."""

    step: str
    run: Callable[[Any], dict[str, Any]]
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
    log_path = layout.step_log(job.step)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    job_path, result_path = work / f"{job.step}.job.pkl", work / f"{job.step}.result.json"
    stop_path = work / f"{job.step}.stop"
    result_path.unlink(missing_ok=True)
    stop_path.unlink(missing_ok=True)  # a request left from an earlier attempt is not this one's
    job.stop_path = str(stop_path)
    with open(job_path, "wb") as fh:
        pickle.dump(job, fh)
    cmd = [sys.executable, "-m", CHILD_MODULE, str(job_path), str(result_path), str(os.getpid())]
    peak = 0
    with open(log_path, "ab") as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} step {job.step}, attempt {job.attempt} =====\n"
                  .encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                **no_window_kwargs())
        try:
            watched = psutil.Process(proc.pid)
            while proc.poll() is None:
                peak = max(peak, tree_rss(watched))
                if stop_event is not None and stop_event.is_set() and not stop_path.exists():
                    stop_path.touch()
                time.sleep(_POLL_S)
        except psutil.NoSuchProcess:
            proc.wait()
        except BaseException:  # interrupted (Ctrl-C twice): the child must not run on alone
            _stop(proc)
            raise
        finally:
            job_path.unlink(missing_ok=True)
            stop_path.unlink(missing_ok=True)
    if was_interrupted(proc.returncode):
        raise KeyboardInterrupt  # Ctrl-C reached the child too (same console): the user's, not a crash
    how = describe_exit(proc.returncode)
    if how is not None:
        raise NativeCrash(job.step, how, log_path)
    result = read_json_file(result_path)
    result_path.unlink(missing_ok=True)
    if proc.returncode != 0 or result is None:
        why = _last_line(log_path)
        raise PosttrainError(f"{job.step} exited with code {proc.returncode} without a result"
                             f"{f' ({why})' if why else ''}; log: {log_path}")
    return ChildOutcome(result, peak, result.get("gpu_mem_bytes"))


def _last_line(log_path: Path) -> str | None:
    """The last line of a step's log: what a child that could not write its result says last (a full
    disk, the store unwritable; `_step_child`), so the step's error names the cause, not only the log."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:500] if lines else None


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(_TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
