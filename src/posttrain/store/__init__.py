"""posttrain's SQLite store: runs, steps, GGUF variants, evaluations and per-item results.

The store owns its SQL. Each table is reached through one small repository on the `Store`:
`store.runs`, `store.steps`, `store.evals` (with its items), `store.run_evals`, `store.variants`,
`store.registrations`, `store.processed`. The schema grows by the append-only migrations in
`_migrations.py`.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.store._artifacts import ProcessedCheckpoints, Registrations, Variants
from posttrain.store._db import Database, dumps, loads, utcnow
from posttrain.store._evals import ITEM_COLUMNS, Evals, RunEvals
from posttrain.store._migrations import MIGRATIONS
from posttrain.store._runs import Runs, Steps


class Store(Database):
    """The store file with its repositories, one per table."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self.runs = Runs(self)
        self.steps = Steps(self)
        self.evals = Evals(self)
        self.run_evals = RunEvals(self)
        self.variants = Variants(self)
        self.registrations = Registrations(self)
        self.processed = ProcessedCheckpoints(self)


__all__ = ["ITEM_COLUMNS", "MIGRATIONS", "Store", "dumps", "loads", "utcnow"]
