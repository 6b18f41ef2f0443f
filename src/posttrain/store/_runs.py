"""The `runs` and `steps` tables: one row per pipeline run and one per step of it.

The runner is the only writer of both (a run's status has one writer); `status`, the report and
`runs` read them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from posttrain.store._db import Database, dumps, utcnow

# The step columns the runner may set; a name from anywhere else never becomes SQL.
STEP_COLUMNS = frozenset({"status", "attempts", "started_at", "finished_at", "wall_s", "peak_rss_bytes",
                          "gpu_mem_bytes", "error", "outputs_json", "inputs_sha256"})


class Runs:
    def __init__(self, db: Database):
        self._db = db

    def open(self, *, run_id: str, checkpoint: str, checkpoint_sha256: str | None, model_name: str | None,
             baseline: str | None, config: Any, run_dir: str, steps: Iterable[str], owner_pid: int) -> None:
        """Create the run (or take up an earlier one with the same id) as running, with its steps."""
        with self._db.connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO runs (id, checkpoint, checkpoint_sha256, model_name, baseline, config_json,"
                " status, created_at, run_dir) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (run_id, checkpoint, checkpoint_sha256, model_name, baseline, dumps(config), utcnow(), run_dir))
            db.execute("UPDATE runs SET status='running', finished_at=NULL, owner_pid=? WHERE id=?",
                       (owner_pid, run_id))
            for name in steps:
                db.execute("INSERT OR IGNORE INTO steps (run_id, name, status) VALUES (?, ?, 'pending')",
                           (run_id, name))

    def finish(self, run_id: str, status: str) -> None:
        """The run's outcome. An interrupted run has no finish time: rerunning its command resumes it."""
        with self._db.connect() as db:
            db.execute("UPDATE runs SET status=?, finished_at=?, owner_pid=NULL WHERE id=?",
                       (status, utcnow() if status != "interrupted" else None, run_id))

    def get(self, run_id: str) -> dict[str, Any] | None:
        rows = self._db.query("SELECT * FROM runs WHERE id = ?", (run_id,))
        return dict(rows[0]) if rows else None

    def newest_first(self, limit: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM runs ORDER BY created_at DESC, id DESC"
        return [dict(r) for r in self._db.query(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())]

    def latest_activity(self, limit: int) -> list[dict[str, Any]]:
        """The runs that finished (or started, if unfinished) most recently."""
        return [dict(r) for r in self._db.query(
            "SELECT * FROM runs ORDER BY COALESCE(finished_at, created_at) DESC LIMIT ?", (limit,))]

    def marked_running(self) -> list[dict[str, Any]]:
        """Runs whose row says running; whether their process still lives is the caller's check (the lock)."""
        return [dict(r) for r in self._db.query("SELECT * FROM runs WHERE status='running'")]


class Steps:
    def __init__(self, db: Database):
        self._db = db

    def of_run(self, run_id: str) -> list[dict[str, Any]]:
        """The run's steps in the order they were created (the pipeline's order)."""
        return [dict(r) for r in self._db.query("SELECT * FROM steps WHERE run_id=? ORDER BY rowid", (run_id,))]

    def update(self, run_id: str, name: str, **cols: Any) -> None:
        unknown = set(cols) - STEP_COLUMNS
        if unknown:
            raise ValueError(f"not step columns: {sorted(unknown)}")
        sets = ", ".join(f"{k}=?" for k in cols)
        with self._db.connect() as db:
            db.execute(f"UPDATE steps SET {sets} WHERE run_id=? AND name=?", (*cols.values(), run_id, name))

    def failed(self, run_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.query(
            "SELECT name, error FROM steps WHERE run_id=? AND status='failed' ORDER BY rowid", (run_id,))]

    def running(self, run_id: str) -> str | None:
        rows = self._db.query("SELECT name FROM steps WHERE run_id=? AND status='running'", (run_id,))
        return rows[0]["name"] if rows else None
