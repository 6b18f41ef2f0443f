"""A small step runner whose state lives in the store, so any crash resumes where it stopped.

It knows nothing about conversion or evaluation: a step is a name, a function from a context to its
outputs (a typed record, `posttrain.contracts` for the pipeline's steps), a check that those outputs
are still there and sound, and the steps it needs. The runner stores outputs as JSON and hands them
to the steps after as the same type again. A step is reused when it finished before, its outputs still verify, and the outputs of the
steps it depends on are the ones it was computed from; otherwise it runs (again). A step found
'running' is one whose process died (kill -9, power loss): the per-run lock says nobody holds it, so
it simply runs again. A step cut short by a stop request (it raised `posttrain.errors.Interrupted`) is
recorded 'interrupted', not failed, and the run with it: the same command runs that step again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from posttrain._locks import FileLock
from posttrain.contracts import RunLayout, decode_outputs, encode_outputs
from posttrain.errors import Interrupted, NativeCrash, PosttrainError, TransientError
from posttrain.pipeline._isolation import ChildOutcome, StepJob, run_in_child
from posttrain.pipeline._resources import ResourceSampler
from posttrain.store import Store, dumps, utcnow

log = logging.getLogger("posttrain.pipeline")

T = TypeVar("T")

DONE, FAILED, SKIPPED, RUNNING, PENDING = "done", "failed", "skipped", "running", "pending"
INTERRUPTED = "interrupted"
# Attempts a step gets when its child process crashes in native code (the first crash is retried once).
CRASH_ATTEMPTS = 2


class StepSkipped(Exception):
    """Raised by a step that has nothing to do here (e.g. Ollama is not reachable): not a failure."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _always_valid(outputs: Any) -> bool:
    return True


@dataclass(frozen=True)
class Step:
    """One unit of work. `run` must be idempotent: after a crash it is simply called again.

    `always` steps (the report) run even when a dependency failed, to say what failed; they still
    wait for their dependencies and see only the outputs of those that finished.

    `isolated` steps load native code (llama.cpp, torch): the runner runs them in a child process
    (`_isolation`), so a crash there fails the step instead of killing the runner. Their `run` must
    then pickle (a module-level function or a bound method of a picklable object).

    `output` is the type `run` returns (a dataclass, or any type pydantic can write as JSON and read
    back): what the store keeps and what the steps after it are handed.
    """

    name: str
    run: Callable[[RunContext], Any]
    output: type
    verify: Callable[[Any], bool] = _always_valid
    depends_on: tuple[str, ...] = ()
    always: bool = False
    isolated: bool = False


@dataclass
class RunSpec:
    """What identifies a run in the store. The same spec resumes the same run."""

    run_id: str
    checkpoint: str
    run_dir: Path
    checkpoint_sha256: str | None = None
    model_name: str | None = None
    baseline: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # [name, size, mtime_ns] of each content file when the run was planned: "unchanged since" checks.
    checkpoint_signature: list[list[Any]] | None = None


@dataclass
class RunContext:
    """What a step sees: where to write, the store, the config, and its dependencies' outputs."""

    spec: RunSpec
    store: Store
    outputs: dict[str, Any]  # dependency name → its outputs, of that step's `output` type
    step_status: dict[str, tuple[str, str | None]]
    stop_requested: threading.Event

    def output(self, step: str, kind: type[T]) -> T:
        """The outputs of dependency `step`, which must have finished (else use `output_if_done`)."""
        found = self.output_if_done(step, kind)
        if found is None:
            raise KeyError(f"step {step} has no outputs here (not a dependency, or it did not finish)")
        return found

    def output_if_done(self, step: str, kind: type[T]) -> T | None:
        """The outputs of dependency `step`, or None when it did not finish (an `always` step's view)."""
        found = self.outputs.get(step)
        if found is not None and not isinstance(found, kind):
            raise TypeError(f"step {step}'s outputs are {type(found).__name__}, not {kind.__name__}")
        return found

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def run_dir(self) -> Path:
        return self.spec.run_dir

    @property
    def config(self) -> dict[str, Any]:
        return self.spec.config

    @property
    def outcome(self) -> str:
        """The status this run is heading for, from the steps so far. Only the runner writes the run's
        status to the store, when it closes the run; steps that speak of it (report, notify) use this."""
        return FAILED if any(status == FAILED for status, _ in self.step_status.values()) else "succeeded"


@dataclass
class StepResult:
    name: str
    status: str  # done | failed | skipped | interrupted
    reused: bool = False
    error: str | None = None
    attempts: int = 0
    wall_s: float | None = None
    peak_rss_bytes: int | None = None
    gpu_mem_bytes: int | None = None
    outputs: Any = None  # of the step's `output` type when done


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    status: str  # succeeded | failed | interrupted
    steps: list[StepResult]

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def failures(self) -> list[StepResult]:
        return [s for s in self.steps if s.status == FAILED]


class RunLocked(PosttrainError):
    """Another live process is driving this run right now."""


class _RunLock:
    """<run_dir>/.lock (posttrain._locks): released by the OS when its holder dies, however it dies."""

    def __init__(self, run_dir: Path, run_id: str):
        run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(RunLayout(run_dir).lock)
        if not self._lock.try_acquire():
            raise RunLocked(f"run {run_id} is already in progress (PID {self._lock.holder()})",
                            remedy="wait for it to finish, or stop that process")

    def release(self) -> None:
        self._lock.release()


def run_is_live(run_dir: str | Path | None) -> bool:
    """Whether a live process drives the run in `run_dir` now. The lock, not a recorded PID, says so:
    the OS drops it when its holder dies, and a recycled PID holds no lock."""
    return run_dir is not None and FileLock.held(RunLayout(Path(run_dir)).lock)


def _inputs_sha256(step: Step, outputs: dict[str, Any], status: dict[str, tuple[str, str | None]]) -> str:
    # Status and error count too: a report must be redone when a dependency now fails for another reason.
    basis = {dep: {"status": status.get(dep, (PENDING, None)),
                   "outputs": encode_outputs(outputs[dep]) if dep in outputs else None}
             for dep in step.depends_on}
    return hashlib.sha256(dumps(basis).encode()).hexdigest()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PosttrainError):
        return exc.one_line()
    text = str(exc).strip().replace("\n", " ")
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


class Runner:
    """Runs steps in order, records each in the store, and resumes a run from what it recorded."""

    def __init__(self, store: Store, steps: Iterable[Step], *, max_retries: int = 3,
                 transient: tuple[type[BaseException], ...] = (TransientError,), backoff_s: float = 2.0,
                 backoff_max_s: float = 60.0, stop_event: threading.Event | None = None,
                 on_event: Callable[[str, str, str], None] | None = None, isolate: bool = True):
        self.store = store
        self.steps = list(steps)
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate step names in {names}")
        for s in self.steps:
            unknown = [d for d in s.depends_on if d not in names[: names.index(s.name)]]
            if unknown:
                raise ValueError(f"step {s.name!r} depends on {unknown}, which do not come before it")
        # `max_retries` counts attempts in all, as the project's convention says (default 3 attempts).
        self.max_attempts = max(1, max_retries)
        self.transient = transient
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.stop_event = stop_event or threading.Event()
        self.on_event = on_event
        # False runs isolated steps in this process too (a debugger, a profiler); crashes are then fatal.
        self.isolate = isolate

    # -- store ---------------------------------------------------------------------------------
    def _open_run(self, spec: RunSpec) -> None:
        self.store.runs.open(run_id=spec.run_id, checkpoint=spec.checkpoint, checkpoint_sha256=spec.checkpoint_sha256,
                             model_name=spec.model_name, baseline=spec.baseline, config=spec.config,
                             run_dir=str(spec.run_dir), steps=[s.name for s in self.steps], owner_pid=os.getpid())

    def _recorded(self, run_id: str) -> dict[str, Any]:
        return {r["name"]: r for r in self.store.steps.of_run(run_id)}

    def _mark(self, run_id: str, name: str, **cols: Any) -> None:
        self.store.steps.update(run_id, name, **cols)

    def _emit(self, run_id: str, step: str, event: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(run_id, step, event)
            except Exception:  # an observer (status file, progress bar) never breaks a run
                log.exception("step event observer failed")

    # -- running -------------------------------------------------------------------------------
    def run(self, spec: RunSpec) -> RunResult:
        lock = _RunLock(spec.run_dir, spec.run_id)
        try:
            self._open_run(spec)
            results = self._run_steps(spec)
        finally:
            lock.release()
        if (self.stop_event.is_set() and len(results) < len(self.steps)) or any(
                r.status == INTERRUPTED for r in results):
            status = INTERRUPTED
        elif any(r.status == FAILED for r in results):
            status = "failed"
        else:
            status = "succeeded"
        self.store.runs.finish(spec.run_id, status)
        log.info("run %s %s", spec.run_id, status)
        return RunResult(spec.run_id, spec.run_dir, status, results)

    def _run_steps(self, spec: RunSpec) -> list[StepResult]:
        recorded = self._recorded(spec.run_id)
        outputs: dict[str, Any] = {}
        status: dict[str, tuple[str, str | None]] = {}
        results: list[StepResult] = []
        for step in self.steps:
            if self.stop_event.is_set():
                log.info("stop requested: run %s stops before step %s (resumable)", spec.run_id, step.name)
                break
            result = self._one(spec, step, recorded.get(step.name), outputs, status)
            results.append(result)
            status[step.name] = (result.status, result.error)
            if result.status == DONE:
                outputs[step.name] = result.outputs
            elif result.status == INTERRUPTED:
                log.info("run %s: step %s interrupted; the run stops here (resumable)", spec.run_id, step.name)
                break
        return results

    def _blocked_by(self, step: Step, status: dict[str, tuple[str, str | None]]) -> str | None:
        for dep in step.depends_on:
            dep_status, dep_error = status.get(dep, (PENDING, None))
            if dep_status == FAILED:
                return f"{dep} failed"
            if dep_status == SKIPPED and not step.always:
                return f"{dep} skipped"
        return None

    def _one(self, spec: RunSpec, step: Step, row: Any, outputs: dict[str, Any],
             status: dict[str, tuple[str, str | None]]) -> StepResult:
        blocked = self._blocked_by(step, status)
        if blocked and not step.always:
            reason = f"skipped: {blocked}"
            self._mark(spec.run_id, step.name, status=SKIPPED, error=reason, started_at=None,
                       finished_at=utcnow(), outputs_json=None, inputs_sha256=None)
            log.warning("run %s: step %s %s", spec.run_id, step.name, reason)
            self._emit(spec.run_id, step.name, SKIPPED)
            return StepResult(step.name, SKIPPED, error=reason)

        inputs = _inputs_sha256(step, outputs, status)
        reused = self._reusable(step, row, inputs)
        if reused is not None:
            log.info("run %s: step %s already done, outputs verified: skipped", spec.run_id, step.name)
            self._emit(spec.run_id, step.name, "reused")
            return StepResult(step.name, DONE, reused=True, attempts=row["attempts"], wall_s=row["wall_s"],
                              peak_rss_bytes=row["peak_rss_bytes"], gpu_mem_bytes=row["gpu_mem_bytes"],
                              outputs=reused)

        ctx = RunContext(spec, self.store, {d: outputs[d] for d in step.depends_on if d in outputs},
                         dict(status), self.stop_event)
        self._mark(spec.run_id, step.name, status=RUNNING, started_at=utcnow(), finished_at=None, error=None,
                   attempts=0, outputs_json=None, inputs_sha256=None)
        log.info("run %s: step %s started", spec.run_id, step.name)
        self._emit(spec.run_id, step.name, RUNNING)
        attempts = crashes = 0
        usage: list[ChildOutcome] = []

        def attempt() -> Any:
            nonlocal attempts, crashes
            attempts += 1
            self._mark(spec.run_id, step.name, attempts=attempts)
            try:
                if step.isolated and self.isolate:
                    out = self._attempt_in_child(spec, step, ctx, attempts, usage)
                else:
                    out = step.run(ctx)
            except NativeCrash as e:
                crashes += 1
                log.error("run %s: step %s attempt %d: %s%s", spec.run_id, step.name, attempts, e.message,
                          "; trying once more" if crashes < CRASH_ATTEMPTS else "")
                raise
            except self.transient as e:
                log.warning("run %s: step %s attempt %d/%d: transient failure: %s", spec.run_id, step.name,
                            attempts, self.max_attempts, _describe(e))
                raise
            if not isinstance(out, step.output):
                raise TypeError(f"step {step.name} returned {type(out).__name__}, not {step.output.__name__}")
            return out

        def retry_wanted(e: BaseException) -> bool:
            # A crash in native code may be a one-off (memory pressure, a flaky driver): once more.
            if isinstance(e, NativeCrash):
                return crashes < CRASH_ATTEMPTS
            return isinstance(e, self.transient) and attempts - crashes < self.max_attempts

        t0 = time.monotonic()
        isolated = step.isolated and self.isolate
        with ResourceSampler(enabled=not isolated) as sampler:
            try:
                out = Retrying(
                    # The predicate decides; this only bounds it (transient attempts plus the crash retry).
                    stop=stop_after_attempt(self.max_attempts + CRASH_ATTEMPTS),
                    wait=wait_exponential(multiplier=self.backoff_s, max=self.backoff_max_s),
                    retry=retry_if_exception(retry_wanted),
                    reraise=True,
                )(attempt)
                # What the store will hold is what later steps see, also when the step ran in this process.
                out = decode_outputs(step.output, encode_outputs(out))
                if not step.verify(out):
                    raise PosttrainError(f"step {step.name} finished but its outputs do not verify: {out}")
                final, error = DONE, None
            except StepSkipped as e:
                out, final, error = None, SKIPPED, f"skipped: {e.reason}"
            except Interrupted as e:  # a stop request cut it short: rerun, not a failure
                out, final, error = None, INTERRUPTED, e.one_line()
            except Exception as e:
                out, final, error = None, FAILED, _describe(e)
                if not isinstance(e, PosttrainError):
                    log.exception("run %s: step %s crashed", spec.run_id, step.name)
        peak_rss = max((u.peak_rss_bytes for u in usage), default=0) if isolated else sampler.peak
        gpu_mem = max((u.gpu_mem_bytes or 0 for u in usage), default=0) or None if isolated else sampler.gpu_peak()
        wall = time.monotonic() - t0
        self._mark(spec.run_id, step.name, status=final, finished_at=utcnow(), wall_s=wall,
                   peak_rss_bytes=peak_rss, gpu_mem_bytes=gpu_mem, error=error,
                   outputs_json=dumps(encode_outputs(out)) if final == DONE else None,
                   inputs_sha256=inputs if final == DONE else None)
        level = logging.INFO if final != FAILED else logging.ERROR
        log.log(level, "run %s: step %s %s in %.1f s%s", spec.run_id, step.name, final, wall,
                f": {error}" if error else "")
        self._emit(spec.run_id, step.name, final)
        return StepResult(step.name, final, error=error, attempts=attempts, wall_s=wall,
                          peak_rss_bytes=peak_rss, gpu_mem_bytes=gpu_mem, outputs=out)

    def _attempt_in_child(self, spec: RunSpec, step: Step, ctx: RunContext, attempt: int,
                          usage: list[ChildOutcome]) -> Any:
        job = StepJob(step.name, step.run, spec, self.store.path, ctx.outputs, ctx.step_status, self.transient,
                      attempt)
        outcome = run_in_child(job, spec.run_dir, self.stop_event)
        usage.append(outcome)
        result = outcome.result
        if result.get("ok"):
            return decode_outputs(step.output, result["outputs"])
        if result.get("skipped"):
            raise StepSkipped(result["message"])
        if result.get("interrupted"):
            raise Interrupted(result["message"], remedy=result.get("remedy"))
        error = TransientError if result.get("transient") else PosttrainError
        raise error(result["message"], remedy=result.get("remedy"))

    @staticmethod
    def _reusable(step: Step, row: Any, inputs: str) -> Any | None:
        if row is None or row["status"] != DONE or row["outputs_json"] is None:
            return None
        if row["inputs_sha256"] != inputs:
            return None
        try:
            out = decode_outputs(step.output, json.loads(row["outputs_json"]))
            return out if step.verify(out) else None
        except Exception:  # outputs that cannot even be read or checked (an older shape) are recomputed
            log.exception("verifying recorded outputs of %s failed; running it again", step.name)
            return None
