"""`ray`: units as Ray tasks on a cluster, retried by Ray when a worker or its node dies.

Without an address posttrain starts a private single-node cluster: no dashboard, no client server,
token authentication on every connection, the dashboard host 127.0.0.1; it is shut down on close. With an address (`auto`, `HOST:PORT`, `ray://HOST:PORT`) it joins a cluster someone
else runs and leaves it running: that cluster's exposure is its operator's (docs/executors.md).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from posttrain.errors import PosttrainError
from posttrain.executors._base import MAX_ATTEMPTS, Done, Executor, Unit, WorkFailed, WorkInterrupted
from posttrain.executors._files import SharedFile, put_chunks

LOOPBACK = "127.0.0.1"
WAIT_S = 1.0  # how long one wait for results blocks, so Ctrl-C, a stop and progress are seen within a second


def _ray():
    try:
        import ray
    except ImportError:
        raise PosttrainError("--executor ray needs Ray, which is not installed",
                             remedy='pip install "posttrain[ray]"') from None
    return ray


class UnitError(Exception):
    """What a unit raised on a worker, with the node it ran on (Ray keeps the cause picklable)."""

    def __init__(self, node: str, error: str):
        super().__init__(node, error)
        self.node, self.error = node, error

    def __str__(self) -> str:
        return f"on {self.node}: {self.error}"


def _run_unit(fn, args):
    """Runs on a Ray worker: the unit's value and the node that made it."""
    # Several Ray nodes can share a host (and its address): the node id tells them apart.
    node = f"{socket.gethostname()} node {_ray().get_runtime_context().get_node_id()[:8]}"
    try:
        return fn(*args), node
    except Exception as e:  # noqa: BLE001 - every failure goes back named, Ray retries it
        text = getattr(e, "one_line", None)
        raise UnitError(node, text() if callable(text) else f"{type(e).__name__}: {e}") from None


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None = None, *, shared_dir: Path | None = None, num_cpus: int | None = None):
        ray = _ray()
        self.address = address
        self.shared_dir = Path(shared_dir).resolve() if shared_dir else None
        self._started_here = address is None
        self._shared: dict[str, SharedFile] = {}
        quiet = {"log_to_driver": False, "logging_level": "warning", "configure_logging": True}
        # A Ray worker imports posttrain from wherever this process does (an editable checkout, a venv).
        env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if os.environ.get("PYTHONPATH") else None
        try:
            if address is None:
                # Ray's gRPC servers listen on every interface whatever the node address (Ray 2.60 has
                # no setting for it), so what guards them is Ray's token authentication, which Ray
                # turns on for a new local cluster unless told otherwise.
                if os.environ.get("RAY_AUTH_MODE", "").strip().lower() not in ("", "token"):
                    raise PosttrainError("RAY_AUTH_MODE turns Ray's token authentication off: the private cluster "
                                         "would run code from anyone who reaches its ports",
                                         remedy="unset RAY_AUTH_MODE (or set it to token)")
                # "local": always a new cluster, never one `ray start` left running on this machine.
                ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=False, dashboard_host=LOOPBACK,
                         num_cpus=num_cpus, runtime_env=env, **quiet)
            else:
                ray.init(address=address, runtime_env=env, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise PosttrainError(f"could not reach the Ray cluster at {address}: {str(e).splitlines()[0] if str(e) else e}",
                                 remedy="start it (`ray start --head`) or check --ray-address") from None
        self._remote = ray.remote(num_cpus=1, max_retries=MAX_ATTEMPTS - 1, retry_exceptions=True)(_run_unit)

    def share(self, path: Path, sha256: str) -> SharedFile:
        """`path` as workers will read it: in place under --shared-dir, else through the object store once."""
        path = Path(path).resolve()
        size = path.stat().st_size
        if self.shared_dir is not None and path.is_relative_to(self.shared_dir):
            return SharedFile(str(path), sha256, size, path.name)
        if sha256 not in self._shared:
            self._shared[sha256] = SharedFile(str(path), sha256, size, path.name, put_chunks(path))
        return self._shared[sha256]

    def nodes_in_use(self) -> int:
        return sum(1 for n in _ray().nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU"))

    def run(self, units: list[Unit], stop: threading.Event | None = None) -> Iterator[Done]:
        ray = _ray()
        pending = {self._remote.options(name=u.name).remote(u.fn, u.args): u for u in units}
        try:
            while pending:
                if stop is not None and stop.is_set():
                    raise WorkInterrupted(len(pending))  # the finally below cancels them on the cluster
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                for ref in ready:
                    unit = pending.pop(ref)
                    try:
                        value, node = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        cause = e.cause if isinstance(e.cause, UnitError) else None
                        raise WorkFailed(unit.name, cause.node if cause else getattr(e, "ip", "?"),
                                         cause.error if cause else _first_line(e), MAX_ATTEMPTS) from None
                    except ray.exceptions.RayError as e:  # the worker or its node died on every attempt
                        raise WorkFailed(unit.name, "?", _first_line(e), MAX_ATTEMPTS) from None
                    yield Done(unit, value, node)
        finally:
            # Ctrl-C, a failed unit, a caller that stopped reading: nothing keeps running on the cluster.
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        _ray().shutdown()


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
