"""llama.cpp in-process: loaded the one safe way, the engine that scores and generates, the
self-test, the build of llama.cpp's own tools, and where the libraries' output goes.

The floor under convert, evaluate, serve and ship: it imports none of them (the self-test's child
excepted, which converts its tiny model), so each of them takes llama.cpp from here instead of from
another stage's private modules.

`import posttrain` imports this package first, before anything can import numpy or torch (the CUDA
crash, see `_loading`). So only the loading names are imported eagerly here, and they cost a few
standard modules; the rest (the engine needs numpy, the tools build a lock and the cache paths, the
library output the terminal) is imported on first use through the module `__getattr__` below.
How a child process ended (`describe_exit`, `was_interrupted`) is told by the one child runner,
`posttrain._child_process`, which the self-test uses too; the two names are handed on from here.
"""

from __future__ import annotations

import importlib
from typing import Any

from posttrain._child_process import describe_exit, was_interrupted
from posttrain.llamacpp._loading import (
    ALL_LAYERS,
    cmake_args_without_amx,
    gpu_offload_supported,
    llama_kwargs,
    load_llama_cpp,
    model_params,
    resolve_gpu_layers,
    system_info,
)
from posttrain.llamacpp._settings import (
    EXTRA_BUFTS_ENV,
    REFERENCE_ENV,
    SETTING_VARIABLES,
    best_threads,
    cpu_threads,
    reference_type,
)

# Public name → the private module that defines it, imported when the name is first asked for. The
# self-test's module among them imports convert, in its child only (it converts its tiny model there).
_LAZY = {
    "decode_entries": "_batch",
    "logits_rows": "_batch",
    "MAX_SEQUENCES": "_engine",
    "LlamaCppEngine": "_engine",
    "Scored": "_engine",
    "ScoreRequest": "_engine",
    "library_output_to": "_library_output",
    "quiet_libraries": "_library_output",
    "stderr_to": "_library_output",
    "log_softmax": "_logprobs",
    "Outcome": "_selftest",
    "run_selftest": "_selftest",
    "QUANTIZE": "_tools_build",
    "LlamaTools": "_tools_build",
    "ToolsNotBuilt": "_tools_build",
    "find_llama_tools": "_tools_build",
    "ensure_profile": "_profile",
    "forget_machine_profile": "_profile",
    "MachineProfile": "_profile_store",
    "count_tokens": "_vocab",
    "open_vocab": "_vocab",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # asked once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ALL_LAYERS",
    "best_threads",
    "count_tokens",
    "ensure_profile",
    "forget_machine_profile",
    "open_vocab",
    "EXTRA_BUFTS_ENV",
    "REFERENCE_ENV",
    "SETTING_VARIABLES",
    "MAX_SEQUENCES",
    "QUANTIZE",
    "LlamaCppEngine",
    "LlamaTools",
    "MachineProfile",
    "Outcome",
    "ScoreRequest",
    "Scored",
    "ToolsNotBuilt",
    "cmake_args_without_amx",
    "cpu_threads",
    "decode_entries",
    "describe_exit",
    "find_llama_tools",
    "gpu_offload_supported",
    "library_output_to",
    "llama_kwargs",
    "load_llama_cpp",
    "log_softmax",
    "logits_rows",
    "model_params",
    "quiet_libraries",
    "reference_type",
    "resolve_gpu_layers",
    "run_selftest",
    "stderr_to",
    "system_info",
    "was_interrupted",
]
