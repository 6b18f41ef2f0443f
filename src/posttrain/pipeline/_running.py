"""Running the stages: the runner for a config, one checkpoint through the whole pipeline, several
checkpoints (one after another or `jobs` at a time), and the watcher's handler."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from posttrain.contracts import DocumentOut, ShipOut
from posttrain.errors import PosttrainError
from posttrain.pipeline._config import Config
from posttrain.pipeline._runner import DONE, Runner, RunResult
from posttrain.pipeline._stages import Stages, check_inputs, plan_run
from posttrain.store import Store

log = logging.getLogger("posttrain.pipeline")


def make_runner(config: Config, store: Store, *, stop_event: threading.Event | None = None,
                on_event: Callable[[str, str, str], None] | None = None) -> Runner:
    from posttrain.errors import TransientError

    return Runner(store, Stages(config).steps(), max_retries=config.retries, backoff_s=config.retry_backoff_s,
                  transient=(TransientError, ConnectionError, TimeoutError), stop_event=stop_event,
                  on_event=on_event)


def run_pipeline(checkpoint: str | Path, config: Config, *, store: Store | None = None,
                 stop_event: threading.Event | None = None,
                 on_event: Callable[[str, str, str], None] | None = None,
                 known_sha256: str | None = None) -> RunResult:
    """Run (or resume) the whole pipeline for one checkpoint (`known_sha256`: its content hash, when
    the caller computed it already)."""
    spec = plan_run(checkpoint, config, known_sha256=known_sha256)
    store = store or Store(config.store_path)
    log.info("run %s: %s → %s", spec.run_id, spec.checkpoint, spec.run_dir)
    return make_runner(config, store, stop_event=stop_event, on_event=on_event).run(spec)


def run_many(checkpoints: list[Path], config: Config, *, jobs: int | None = None,
             stop_event: threading.Event | None = None,
             on_event: Callable[[str, str, str], None] | None = None) -> list[RunResult | PosttrainError]:
    """Several checkpoints: one after another, or `jobs` at a time. A checkpoint that cannot even be
    planned (incomplete, unreadable) gives its error in its place; the others still run."""
    check_inputs(config)
    store = Store(config.store_path)
    jobs = jobs or config.jobs

    def one(ckpt: Path) -> RunResult | PosttrainError:
        if stop_event is not None and stop_event.is_set():
            return PosttrainError(f"{ckpt}: not started (stop requested)")
        try:
            return run_pipeline(ckpt, config, store=store, stop_event=stop_event, on_event=on_event)
        except PosttrainError as e:  # the caller reports it next to the other results
            return e

    if jobs <= 1 or len(checkpoints) <= 1:
        return [one(c) for c in checkpoints]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="posttrain-run") as pool:
        return list(pool.map(one, checkpoints))


def pipeline_handler(config: Config, store: Store | None = None):
    """The watcher's handler factory: each finished checkpoint goes through `run_pipeline`."""

    def factory(watcher, stop: threading.Event):
        def handle(path: Path, sha: str) -> dict[str, Any]:
            def on_event(run_id: str, step: str, event: str) -> None:
                if event == "running":
                    watcher.note_stage(path, run_id, step)

            result = run_pipeline(path, config, store=store or watcher.store, stop_event=stop, on_event=on_event,
                                  known_sha256=sha)
            failed = result.failures()
            # run_dir and verdicts: what `watch --once` prints when it ends (as `run` does).
            out = {"status": result.status, "run_id": result.run_id, "run_dir": str(result.run_dir),
                   "verdicts": outcome_sentences(result),
                   "error": "; ".join(f"{f.name}: {f.error}" for f in failed) or None}
            if config.watch.series and result.status != "interrupted":
                out.update(update_series(config, store or watcher.store, path))
            return out

        return handle

    return factory


def update_series(config: Config, store: Store, checkpoint: Path) -> dict[str, Any]:
    """Rewrite the series report of the training run `checkpoint` belongs to (its parent folder).
    A series that cannot be written is logged, never a failure of the checkpoint's own run."""
    from posttrain.series import series_report

    folder = Path(checkpoint).resolve().parent
    try:
        doc, layout = series_report(store, config.base_dir, folder, seed=config.seed)
    except Exception as e:  # e.g. the checkpoint's evaluation failed: the series waits for the next one
        log.warning("series of %s not written: %s", folder, e.one_line() if isinstance(e, PosttrainError) else e)
        return {}
    log.info("series of %s (%d checkpoints): %s", folder, len(doc.points), layout.html)
    return {"series": str(layout.html), "series_sentence": doc.best.sentence if doc.best else None}


def outcome_sentences(result: RunResult) -> list[str]:
    """What a run concluded, in the words its documents already hold: the compare step's sentence for
    each comparison (compare.json, the sentences `demo` and `status` show), then the ship step's pick
    when the run has one. Only a step done in this run (or verified and reused) is read, so a
    document left by an earlier attempt never speaks for this one."""
    from posttrain.compare import verdict_sentences

    done = {s.name: s.outputs for s in result.steps if s.status == DONE}
    compare, ship = done.get("compare"), done.get("ship")
    lines = verdict_sentences(compare.path) if isinstance(compare, DocumentOut) else []
    return [*lines, ship.sentence] if isinstance(ship, ShipOut) else lines
