"""Options that several commands share, defined once so their names, defaults and help agree."""

from __future__ import annotations

import typer


def n_gpu_layers_option() -> int | None:
    return typer.Option(
        None, "--n-gpu-layers", "-ngl", envvar="POSTTRAIN_N_GPU_LAYERS",
        help="Layers llama.cpp puts on the GPU: -1 all, 0 none (default: all when this llama.cpp build "
             "offloads, e.g. built with POSTTRAIN_CUDA=1; none on a CPU build).")
