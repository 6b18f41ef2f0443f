"""Progress of a sharded evaluation: shards done of all planned, items/s, nodes in use.

Under a command's progress display (posttrain._progress) the shards count in its current stage;
without one (posttrain used as a library) a rich bar of its own shows them.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from posttrain import _progress


class ShardProgress:
    """`with ShardProgress() as p:` — `add(n)` when shards are planned, `advance(docs, nodes)` per result."""

    def __init__(self, console: Console | None = None):
        self._display = _progress.current()
        self._progress = None if self._display is not None else Progress(
            TextColumn("shards"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} items/s · {task.fields[nodes]} node(s)"), TimeElapsedColumn(),
            console=console or Console(stderr=True), transient=False)
        self._task = None
        self._docs = 0
        self._started = time.perf_counter()

    def __enter__(self) -> ShardProgress:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("shards", total=0, rate="–", nodes="–")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add(self, shards: int) -> None:
        if self._display is not None:
            self._display.add_total(shards, unit="shards")
            return
        total = self._progress.tasks[0].total or 0
        self._progress.update(self._task, total=total + shards)

    def advance(self, docs: int, nodes: int) -> None:
        self._docs += docs
        rate = self._docs / max(time.perf_counter() - self._started, 1e-9)
        if self._display is not None:
            self._display.advance(1)
            self._display.detail(f"{rate:.1f} items/s on {nodes} node(s)")
            return
        self._progress.update(self._task, advance=1, rate=f"{rate:.1f}", nodes=str(nodes))
