"""The one contract every executor keeps: submit a unit of work, get its result or its failure, cancel.

A unit is a plain function and picklable arguments. The executor decides where it runs (this
process, a Ray worker on another node); the caller only sees results as they complete, or a
`WorkFailed` naming the unit, the node and the error. Stages never learn which executor ran them.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from posttrain.errors import Interrupted, PosttrainError

# A unit that fails this many times in all (first try plus retries) fails its step.
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Unit:
    """One piece of work: `fn(*args)` must return a picklable value and write nothing the caller owns."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()


@dataclass(frozen=True)
class Done:
    """A unit's result, with the node that produced it (a host name, or "local")."""

    unit: Unit
    value: Any
    node: str


class WorkFailed(PosttrainError):
    """A unit failed on every attempt; the message names the unit, the node and the error."""

    def __init__(self, unit: str, node: str, error: str, attempts: int):
        super().__init__(f"{unit} failed {attempts} time(s); last on node {node}: {error}",
                         remedy="nothing of this step was stored; fix the cause and run again")
        self.unit, self.node, self.error, self.attempts = unit, node, error, attempts


class WorkInterrupted(Interrupted):
    """A stop was asked for while units were outstanding; those were cancelled (`Executor.run(stop=)`)."""

    def __init__(self, outstanding: int):
        super().__init__(f"stopped on request with {outstanding} unit(s) outstanding; they were cancelled",
                         remedy="run the same command again to resume")
        self.outstanding = outstanding


class Executor(ABC):
    """Runs units; `run` yields each one's `Done` as it completes (in no set order)."""

    name: str = "executor"

    @abstractmethod
    def run(self, units: list[Unit], stop: threading.Event | None = None) -> Iterator[Done]:
        """Run all units; yield results as they come. Raises `WorkFailed` for a unit out of attempts,
        after cancelling the others. Closing the iterator early (Ctrl-C) cancels what is still running;
        so does `stop` once set (`posttrain stop`), which then raises `WorkInterrupted`."""

    def share(self, path, sha256: str):
        """`path` as a unit will read it on its node (`SharedFile.local_path()` there)."""
        from pathlib import Path

        from posttrain.executors._files import SharedFile

        path = Path(path).resolve()
        return SharedFile(str(path), sha256, path.stat().st_size, path.name)

    def nodes_in_use(self) -> int:
        return 1

    def close(self) -> None:
        """Release what the executor started (a local Ray cluster); connections to others are dropped."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StopOn(Executor):
    """`executor`, with every `run` stopped by `stop` (a caller that cannot pass it, e.g. convert's).
    The wrapped executor stays its owner's to close."""

    def __init__(self, executor: Executor, stop: threading.Event):
        self.inner, self.stop = executor, stop
        self.name = executor.name
        self.shared_dir = getattr(executor, "shared_dir", None)

    def run(self, units: list[Unit], stop: threading.Event | None = None) -> Iterator[Done]:
        return self.inner.run(units, stop=stop or self.stop)

    def share(self, path, sha256: str):
        return self.inner.share(path, sha256)

    def nodes_in_use(self) -> int:
        return self.inner.nodes_in_use()
