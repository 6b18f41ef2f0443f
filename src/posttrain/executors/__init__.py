"""Executors: where units of work run. `local` (this process, as always) or `ray` (a Ray cluster).

`make_executor("local" | "ray" | "ray://HOST:PORT", ray_address=, shared_dir=)` picks one; callers
submit `Unit`s and read `Done` results (`Executor.run`), or get a `WorkFailed`.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.errors import PosttrainError
from posttrain.executors._base import MAX_ATTEMPTS, Done, Executor, StopOn, Unit, WorkFailed, WorkInterrupted
from posttrain.executors._files import SharedFile
from posttrain.executors._local import LocalExecutor

EXECUTORS = ("local", "ray")


def make_executor(spec: str | None = "local", *, ray_address: str | None = None,
                  shared_dir: Path | None = None) -> Executor:
    """`local` (default), `ray` (a private local cluster, or `ray_address`), or `ray://HOST:PORT`."""
    spec = (spec or "local").strip()
    if spec.startswith("ray://"):
        if ray_address and ray_address != spec:
            raise PosttrainError(f"--executor {spec} and --ray-address {ray_address} disagree", remedy="give one")
        spec, ray_address = "ray", spec
    if spec == "local":
        if ray_address:
            raise PosttrainError("--ray-address needs --executor ray")
        return LocalExecutor()
    if spec == "ray":
        from posttrain import _progress
        from posttrain.executors._ray import RayExecutor

        # Seconds (a new local cluster) to a minute (a remote one): a stage of the display while it lasts.
        _progress.begin("starting a local Ray cluster" if ray_address is None else f"connecting to Ray at {ray_address}")
        executor = RayExecutor(ray_address, shared_dir=shared_dir)
        _progress.end()
        return executor
    raise PosttrainError(f"unknown executor {spec!r}", remedy="use local, ray or ray://HOST:PORT")


__all__ = ["EXECUTORS", "MAX_ATTEMPTS", "Done", "Executor", "LocalExecutor", "SharedFile", "StopOn", "Unit", "WorkFailed",
           "WorkInterrupted", "make_executor"]
