"""`local`: today's path. Units run one after the other in this process (a pipeline step already runs
in its own child process, so a crash in native code is still seen by the runner)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from posttrain.executors._base import Done, Executor, Unit, WorkInterrupted


class LocalExecutor(Executor):
    name = "local"

    def run(self, units: list[Unit], stop: threading.Event | None = None) -> Iterator[Done]:
        for i, unit in enumerate(units):
            if stop is not None and stop.is_set():  # between units: one in progress here cannot be cut short
                raise WorkInterrupted(len(units) - i)
            yield Done(unit, unit.fn(*unit.args), "local")
