"""`PosttrainCallback`: hand the finished model to posttrain from inside a transformers `Trainer`.

For people who prefer a hook to a watcher. At `on_train_end`, on the main process only, the
callback hands the final checkpoint over and returns at once:

- if a posttrain watcher is running for the configured home and already watches the checkpoint's
  path (its roots and pattern, read from the watcher's status file), the watcher picks it up by
  itself as soon as the files are complete: nothing is started, the hand-over is logged;
- otherwise it starts a detached helper (its own session, output to a log file under
  `<home>/logs/`) that waits until the checkpoint is complete, then becomes `posttrain run
  CHECKPOINT ...`.

When training logs to MLflow (transformers' `MLflowCallback`, or the script's own
`mlflow.start_run()`), the callback notes that run's id for posttrain's tracking
(`posttrain.track.record_parent`), so `--track mlflow` records posttrain's run as its nested child.

`on_train_end` fires inside `trainer.train()`, before the usual `trainer.save_model(...)`: that is
why the helper waits for the checkpoint rather than expecting it to be there. Nothing in here may
stop or slow training: every failure is logged and swallowed, and the waiting happens in another
process.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import TrainerCallback

from posttrain._lifeline import detached_kwargs

log = logging.getLogger("posttrain.integrations")

Mode = Literal["auto", "enqueue", "subprocess"]
_MODES = ("auto", "enqueue", "subprocess")

# Launcher variables of torchrun/accelerate/DeepSpeed: a child that inherits them believes it is one
# rank of the training job (and waits for the others). posttrain is a separate, single process.
_DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK")
_DISTRIBUTED_PREFIXES = ("TORCHELASTIC_", "ACCELERATE_", "DEEPSPEED_", "OMPI_", "PMI_")


@dataclass
class Handoff:
    """What the callback did. `mode`: "watcher" (a running watcher will pick it up), "subprocess"
    (a helper was started: `pid`, `log`), "skipped" (enqueue asked, no watcher covers the path) or
    "failed" (`detail` says why; training went on regardless)."""

    mode: str
    checkpoint: Path
    detail: str = ""
    pid: int | None = None
    log: Path | None = None
    argv: list[str] = field(default_factory=list)


class PosttrainCallback(TrainerCallback):
    """Opt-in: `Trainer(..., callbacks=[PosttrainCallback(baseline="./base_model")])`.

    `checkpoint`: the directory the final model is (or will be) saved to; default the Trainer's
    `output_dir` (where `trainer.save_model()` writes). `home`: posttrain's base directory (default:
    the config file's `home`, else `$POSTTRAIN_HOME`). `config`: a `posttrain.toml` for the run.
    `baseline`: what the new model is compared against. `mode`: "auto" (watcher if one covers the
    checkpoint, else subprocess), "enqueue" (watcher only) or "subprocess". `executable`: the
    posttrain command (default: this Python's `-m posttrain`). `wait_timeout_s`: how long the
    helper waits for the checkpoint to be complete.
    """

    def __init__(self, home: str | Path | None = None, config: str | Path | None = None,
                 baseline: str | None = None, mode: Mode = "auto", *, checkpoint: str | Path | None = None,
                 executable: str | None = None, extra_args: list[str] | tuple[str, ...] = (),
                 wait_timeout_s: float = 3600.0) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, not {mode!r}")
        self.home = Path(home).expanduser() if home is not None else None
        self.config = Path(config).expanduser().resolve() if config is not None else None
        self.baseline = baseline
        self.mode = mode
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint is not None else None
        self.executable = executable
        self.extra_args = list(extra_args)
        self.wait_timeout_s = wait_timeout_s
        self.handoff: Handoff | None = None
        self._train_began: float | None = None
        self._mlflow_run: tuple[str, str | None] | None = None

    # -- Trainer events ------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._train_began = time.time()
        # Seen now: transformers' MLflowCallback (called before this one) has started its run, and
        # ends it at train end, before this callback's on_train_end.
        self._mlflow_run = training_mlflow_run()

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.handoff is not None:
            return  # once, and only on the main process: the other ranks hold no checkpoint of their own
        checkpoint = (self.checkpoint or Path(args.output_dir)).resolve()
        try:
            self.handoff = self._hand_over(checkpoint)
        except Exception as e:  # never into training: a hook must not turn a finished run into a crash
            log.exception("posttrain: could not hand %s over; training is unaffected", checkpoint)
            self.handoff = Handoff("failed", checkpoint, detail=f"{e.__class__.__name__}: {e}")

    # -- hand-over -----------------------------------------------------------------------------
    def _resolved_home(self) -> Path:
        if self.home is not None:
            return self.home
        if self.config is not None:
            from posttrain.pipeline import load_config

            return load_config(self.config).base_dir
        from posttrain import paths

        return paths.home()

    def _hand_over(self, checkpoint: Path) -> Handoff:
        home = self._resolved_home()
        self._note_mlflow_parent(home, checkpoint)
        if self.mode != "subprocess":
            pid = watching_pid(home, checkpoint)
            if pid is not None:
                log.info("posttrain: the watcher (PID %d) for %s picks up %s once it is complete", pid, home,
                         checkpoint)
                return Handoff("watcher", checkpoint, detail=f"watcher PID {pid} watches this path", pid=pid)
            if self.mode == "enqueue":
                log.warning("posttrain: no running watcher for %s watches %s; nothing was handed over "
                            "(start one with `posttrain watch DIR --daemon`, or use mode='auto')", home, checkpoint)
                return Handoff("skipped", checkpoint, detail="no running watcher covers this path")
        return self._spawn(home, checkpoint)

    def _note_mlflow_parent(self, home: Path, checkpoint: Path) -> None:
        parent = self._mlflow_run or training_mlflow_run()
        if parent is None:
            return
        from posttrain.track import record_parent

        try:
            record_parent(home, checkpoint, parent[0], parent[1])
            log.info("posttrain: %s was trained in MLflow run %s; posttrain's run is tracked under it", checkpoint,
                     parent[0])
        except OSError as e:  # tracking's nesting is a nicety; the hand-over still happens
            log.warning("posttrain: could not note MLflow run %s for %s: %s", parent[0], checkpoint, e)

    def command(self, home: Path, checkpoint: Path) -> list[str]:
        """The `posttrain run` command line the helper becomes once the checkpoint is complete."""
        base = [self.executable] if self.executable else [sys.executable, "-m", "posttrain"]
        argv = [*base, "run", str(checkpoint), "--home", str(home)]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        if self.baseline is not None:
            argv += ["--baseline", str(self.baseline)]
        return argv + self.extra_args

    def _spawn(self, home: Path, checkpoint: Path) -> Handoff:
        argv = self.command(home, checkpoint)
        if shutil.which(argv[0]) is None:
            # Checked here, not in the helper: the user sees the mistake in the training log.
            log.error("posttrain: cannot start %r: no such executable; %s was not handed over", argv[0], checkpoint)
            return Handoff("failed", checkpoint, detail=f"no such executable: {argv[0]}", argv=argv)
        logs = home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        log_path = logs / f"callback-{stamp}-{os.getpid()}.log"
        since = self._train_began if self._train_began is not None else 0.0
        helper = [sys.executable, "-m", "posttrain.integrations._handoff", "--checkpoint", str(checkpoint),
                  "--since", repr(since), "--timeout", repr(self.wait_timeout_s), "--", *argv]
        env = {k: v for k, v in os.environ.items()
               if k not in _DISTRIBUTED_ENV and not k.startswith(_DISTRIBUTED_PREFIXES)}
        with open(log_path, "ab") as sink:
            proc = subprocess.Popen(helper, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                    close_fds=True, env=env, cwd=str(home), **detached_kwargs())
        log.info("posttrain: started PID %d: once %s is complete it runs `%s` (log: %s)", proc.pid, checkpoint,
                 " ".join(argv), log_path)
        return Handoff("subprocess", checkpoint, detail="helper started", pid=proc.pid, log=log_path, argv=argv)


def training_mlflow_run() -> tuple[str, str | None] | None:
    """(run id, tracking URI) of the MLflow run this training logs to, or None. MLflow is never
    imported here: a job that logs to it has imported it already."""
    mlflow = sys.modules.get("mlflow")
    try:
        active = mlflow.active_run() if mlflow is not None and hasattr(mlflow, "active_run") else None
        if active is not None:
            return active.info.run_id, mlflow.get_tracking_uri()
    except Exception:  # never into training
        log.exception("posttrain: could not read the active MLflow run")
    if run_id := os.environ.get("MLFLOW_RUN_ID", "").strip():
        return run_id, os.environ.get("MLFLOW_TRACKING_URI") or None
    return None


def watching_pid(home: Path, checkpoint: Path) -> int | None:
    """The PID of the running watcher for `home` when its roots and pattern cover `checkpoint`.

    Running means alive by PID *and* by a recent heartbeat in its status file: a hung watcher would
    take the checkpoint and never process it, so it is passed over like a dead one."""
    from posttrain._files import read_json_file
    from posttrain.pipeline import STATUS_FILE, compile_pattern, watcher_health

    health = watcher_health(home)
    if not health.alive:
        if health.pid is not None:
            log.warning("posttrain: not handing over to the watcher: %s", health.reason)
        return None
    status = read_json_file(home / STATUS_FILE) or {}
    if status.get("pid") != health.pid or status.get("mode") == "once":
        return None  # a `watch --once` scan will not come back for a checkpoint saved after it
    regex = compile_pattern(str(status.get("pattern") or "**/final_model"))
    for root in status.get("roots") or []:
        try:
            rel = checkpoint.resolve().relative_to(Path(root).resolve())
        except ValueError:
            continue
        if rel.parts and regex.match(rel.as_posix()):
            return health.pid
    return None
