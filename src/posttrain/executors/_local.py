"""`local`: today's path. Units run one after the other in this process (a pipeline step already runs
in its own child process, so a crash in native code is still seen by the runner)."""

from __future__ import annotations

from collections.abc import Iterator

from posttrain.executors._base import Done, Executor, Unit


class LocalExecutor(Executor):
    name = "local"

    def run(self, units: list[Unit]) -> Iterator[Done]:
        for unit in units:
            yield Done(unit, unit.fn(*unit.args), "local")
