"""The unattended pipeline: steps with state in the store (resume after any crash), the stages as
steps, settings from posttrain.toml / POSTTRAIN_* / flags, and the checkpoint watcher daemon."""

from posttrain.pipeline._baseline import Baseline
from posttrain.pipeline._config import (
    Config,
    find_config_file,
    load_config,
)
from posttrain.pipeline._config_template import config_template
from posttrain.pipeline._daemon import (
    STATUS_FILE,
    InstanceLock,
    install_stop_handlers,
    log_tail,
    read_pid_file,
    serve_watch,
    spawn_detached,
    stop_daemon,
    watcher_health,
)
from posttrain.pipeline._runner import (
    RunContext,
    Runner,
    RunResult,
    RunSpec,
    Step,
    StepResult,
    StepSkipped,
)
from posttrain.pipeline._running import outcome_sentences, pipeline_handler, run_many, run_pipeline
from posttrain.pipeline._stages import Stages, check_inputs, plan_run
from posttrain.pipeline._status import gather_status
from posttrain.pipeline._watcher import Watcher, compile_pattern

__all__ = [
    "STATUS_FILE",
    "Baseline",
    "Config",
    "InstanceLock",
    "RunContext",
    "RunResult",
    "RunSpec",
    "Runner",
    "Stages",
    "Step",
    "StepResult",
    "StepSkipped",
    "Watcher",
    "check_inputs",
    "compile_pattern",
    "config_template",
    "find_config_file",
    "gather_status",
    "install_stop_handlers",
    "load_config",
    "log_tail",
    "outcome_sentences",
    "pipeline_handler",
    "plan_run",
    "read_pid_file",
    "run_many",
    "run_pipeline",
    "serve_watch",
    "spawn_detached",
    "stop_daemon",
    "watcher_health",
]
