"""Options that several commands share, defined once so their names, defaults and help agree."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer


# -- lists: one convention on every command ------------------------------------------------------
# `--tasks a,b`, `--tasks a --tasks b` and a mix of both mean the same everywhere; the option is a
# repeatable list and its callback splits the commas, so a command receives the final list.

def split_list(values: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Repeated values and comma lists as one list: ["a,b", " c", "a"] -> ["a", "b", "c"] (blanks
    dropped, each once, in the order given)."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else values
    return list(dict.fromkeys(part.strip() for item in items for part in item.split(",") if part.strip()))


def _split_or_none(values: list[str] | None) -> list[str] | None:
    # Not given stays None: the config file or the default decides.
    return None if values is None else split_list(values)


def tasks_option(default: list[str] | None = None, help: str = "lm-eval tasks") -> list[str] | None:
    return typer.Option(default, "--tasks", "-t", metavar="TASKS", callback=_split_or_none,
                        help=f"{help}: repeatable or comma-separated (--tasks mmlu,gsm8k or --tasks mmlu --tasks gsm8k).")


def quant_option(default: list[str] | None = None, help: str = "GGUF types") -> list[str] | None:
    return typer.Option(default, "--quant", "-q", metavar="TYPES", callback=_split_or_none,
                        help=f"{help}: repeatable or comma-separated (-q f16,q8_0 or -q f16 -q q8_0).")


def n_gpu_layers_option() -> int | None:
    return typer.Option(
        None, "--n-gpu-layers", "-ngl", envvar="POSTTRAIN_N_GPU_LAYERS",
        help="Layers llama.cpp puts on the GPU: -1 all, 0 none (default: all when this llama.cpp build "
             "offloads, e.g. built with POSTTRAIN_CUDA=1; none on a CPU build).")


def executor_option(default: str | None = "local") -> str:
    # The pipeline's default is None: the config's `executor` (itself "local" by default) then stands.
    return typer.Option(
        default, "--executor", envvar="POSTTRAIN_EXECUTOR",
        help="Where evaluation shards and quantizations run: local (this process, default), ray (a private Ray cluster on "
             "127.0.0.1, or the one --ray-address names), or ray://HOST:PORT (docs/executors.md).")


def ray_address_option() -> str | None:
    return typer.Option(None, "--ray-address", envvar="POSTTRAIN_RAY_ADDRESS",
                        help="An existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT (with --executor ray).")


def shared_dir_option():
    return typer.Option(None, "--shared-dir", envvar="POSTTRAIN_SHARED_DIR",
                        help="A folder every Ray node sees at the same path: models under it are read in place, "
                             "others are sent once per node through Ray's object store.")


def shard_docs_option() -> int | None:
    return typer.Option(None, "--shard-docs", min=1,
                        help="Documents per evaluation shard (default: about a minute's worth, from the model size).")


def home_option() -> Path | None:
    return typer.Option(None, "--home", help="Base directory for outputs and the store posttrain.db "
                                             "(default $POSTTRAIN_HOME, else ~/.local/share/posttrain).")


def config_option() -> Path | None:
    return typer.Option(None, "--config", "-c", help="posttrain.toml to read (default: ./posttrain.toml if present).")


# -- the options `run` and `watch` share ------------------------------------------------------------
# Declared once and added to both commands by `@pipeline_options`, which hands them to the command as
# one `PipelineOptions`: a new pipeline setting is one line here, not two signatures kept in step.

@dataclass(frozen=True)
class PipelineOptions:
    baseline: str | None = None
    config: Path | None = None
    quant: list[str] | None = None
    reference: str | None = None
    tasks: list[str] | None = None
    limit: int | None = None
    home: Path | None = None
    jobs: int | None = None
    data_dir: Path | None = None
    notify: list[str] | None = None
    n_gpu_layers: int | None = None
    track: list[str] | None = None
    track_artifacts: list[str] | None = None
    executor: str | None = None
    ray_address: str | None = None
    shared_dir: Path | None = None
    shard_docs: int | None = None
    base: Path | None = None

    def load_config(self, **watch):
        """The run's settings: the flags given, over POSTTRAIN_* variables, over posttrain.toml."""
        from posttrain.pipeline import load_config

        return load_config(self.config, home=self.home, baseline=self.baseline,
                           quants=",".join(self.quant) if self.quant else None, reference=self.reference,
                           tasks=",".join(self.tasks) if self.tasks else None, limit=self.limit, jobs=self.jobs,
                           data_dir=self.data_dir, notify={"urls": list(self.notify)} if self.notify else None,
                           n_gpu_layers=self.n_gpu_layers, track=_joined(self.track),
                           track_artifacts=_joined(self.track_artifacts), executor=self.executor,
                           ray_address=self.ray_address, shared_dir=self.shared_dir, shard_docs=self.shard_docs,
                           base=self.base,
                           watch={k: v for k, v in watch.items() if v is not None})


def _joined(values: list[str] | None) -> str | None:
    return ",".join(values) if values else None


def _pipeline_option_params() -> list[inspect.Parameter]:
    options = {
        "baseline": typer.Option(None, "--baseline", "-b", help="HF directory, .gguf file, or ollama:NAME to compare against."),
        "config": config_option(),
        "quant": quant_option(help="GGUF types (default f16,q8_0,q4_k_m)"),
        "reference": typer.Option(None, "--reference", metavar="auto|f16|bf16",
                                  help="The 16-bit type evaluated as the model (default auto: BF16 where this CPU "
                                       "runs it faster and the checkpoint allows it, else F16)."),
        "tasks": tasks_option(help="lm-eval tasks (default mmlu,gsm8k,hellaswag)"),
        "limit": typer.Option(None, "--limit", help="Evaluate only N items per task."),
        "home": home_option(),
        "jobs": typer.Option(None, "--jobs", "-j", help="Checkpoints processed at the same time (default 1)."),
        "data_dir": typer.Option(None, "--data-dir", help="Local benchmark files in the official layouts (no Hub)."),
        "notify": typer.Option(None, "--notify", metavar="URL", help="apprise URL to notify when a run ends (repeatable), e.g. ntfy://topic."),
        "n_gpu_layers": n_gpu_layers_option(),
        "track": typer.Option(None, "--track", help="Record each run in an experiment tracker: mlflow, wandb "
                              "(repeatable or comma-separated). MLflow: local store under HOME/mlruns unless "
                              "MLFLOW_TRACKING_URI is set; W&B: offline unless WANDB_MODE=online."),
        "track_artifacts": typer.Option(None, "--track-artifacts", help="Also send these to the trackers: gguf "
                                        "(the model files). Reports and documents are always sent."),
        "executor": executor_option(default=None),
        "ray_address": ray_address_option(),
        "shared_dir": shared_dir_option(),
        "shard_docs": shard_docs_option(),
        "base": typer.Option(None, "--base", help="Base model directory of LoRA adapter checkpoints "
                             "(default: the base named in adapter_config.json)."),
    }
    hints = typing.get_type_hints(PipelineOptions)
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=hints[name])
            for name, option in options.items()]


def pipeline_options(command: Callable) -> Callable:
    """Give `command` the shared pipeline options; it receives them as `options: PipelineOptions`."""
    own = inspect.signature(command)
    params = [p for name, p in own.parameters.items() if name != "options"]
    added = _pipeline_option_params()
    hints = {k: v for k, v in typing.get_type_hints(command).items() if k != "options"}

    @functools.wraps(command)
    def with_options(*args, **kwargs):
        shared = {p.name: kwargs.pop(p.name) for p in added}
        return command(*args, options=PipelineOptions(**shared), **kwargs)

    # typer reads the parameters from the signature and their types from __annotations__.
    with_options.__signature__ = own.replace(parameters=[
        *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation)) for p in params),
        *added])
    with_options.__annotations__ = {**hints, **{p.name: p.annotation for p in added}}
    del with_options.__wrapped__  # else typer (through get_type_hints) would read the original
    return with_options
