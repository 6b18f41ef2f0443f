"""The unattended pipeline: steps with state in the store (resume after any crash), the stages as
steps, settings from posttrain.toml / POSTTRAIN_* / flags, and the checkpoint watcher daemon."""

from posttrain.pipeline._config import Config, config_template, find_config_file, load_config
from posttrain.pipeline._daemon import InstanceLock, install_stop_handlers, read_pid_file, stop_daemon
from posttrain.pipeline._runner import (
    RunContext,
    Runner,
    RunResult,
    RunSpec,
    Step,
    StepResult,
    StepSkipped,
    step_rows,
)

__all__ = [
    "Config",
    "InstanceLock",
    "RunContext",
    "RunResult",
    "RunSpec",
    "Runner",
    "Step",
    "StepResult",
    "StepSkipped",
    "config_template",
    "find_config_file",
    "install_stop_handlers",
    "load_config",
    "read_pid_file",
    "step_rows",
    "stop_daemon",
]
