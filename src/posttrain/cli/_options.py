"""Options that several commands share, defined once so their names, defaults and help agree."""

from __future__ import annotations

import typer


def n_gpu_layers_option() -> int | None:
    return typer.Option(
        None, "--n-gpu-layers", "-ngl", envvar="POSTTRAIN_N_GPU_LAYERS",
        help="Layers llama.cpp puts on the GPU: -1 all, 0 none (default: all when this llama.cpp build "
             "offloads, e.g. built with POSTTRAIN_CUDA=1; none on a CPU build).")


def executor_option() -> str:
    return typer.Option(
        "local", "--executor", envvar="POSTTRAIN_EXECUTOR",
        help="Where evaluation shards run: local (this process, default), ray (a private Ray cluster on "
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
