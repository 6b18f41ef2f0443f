"""One progress bar for a sharded evaluation: shards done of all planned, items/s, nodes in use."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class ShardProgress:
    """`with ShardProgress() as p:` — `add(n)` when shards are planned, `advance(docs, nodes)` per result."""

    def __init__(self, console: Console | None = None):
        self._progress = Progress(
            TextColumn("shards"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} items/s · {task.fields[nodes]} node(s)"), TimeElapsedColumn(),
            console=console or Console(stderr=True), transient=False)
        self._task = None
        self._docs = 0
        self._started = time.perf_counter()

    def __enter__(self) -> ShardProgress:
        self._progress.start()
        self._task = self._progress.add_task("shards", total=0, rate="–", nodes="–")
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def add(self, shards: int) -> None:
        total = self._progress.tasks[0].total or 0
        self._progress.update(self._task, total=total + shards)

    def advance(self, docs: int, nodes: int) -> None:
        self._docs += docs
        rate = self._docs / max(time.perf_counter() - self._started, 1e-9)
        self._progress.update(self._task, advance=1, rate=f"{rate:.1f}", nodes=str(nodes))
