"""posttrain's SQLite store: runs, steps, GGUF variants, evaluations and per-item results.

The schema grows by an append-only list of named migrations; each is applied once, in order, and
recorded in `_migrations`. Never edit or reorder a migration that has shipped: add a new one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from posttrain.contracts import ItemResult
from posttrain.errors import PosttrainError

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


def _script(db: sqlite3.Connection, sql: str) -> None:
    # executescript() would COMMIT the open transaction first; a migration must apply whole or not at all.
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@migration
def m001_runs_and_steps(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            checkpoint TEXT NOT NULL,
            checkpoint_sha256 TEXT,
            model_name TEXT,
            baseline TEXT,
            config_json TEXT,
            status TEXT NOT NULL DEFAULT 'pending',
            created_at TEXT NOT NULL,
            finished_at TEXT,
            run_dir TEXT
        );
        CREATE TABLE steps (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            started_at TEXT,
            finished_at TEXT,
            wall_s REAL,
            peak_rss_bytes INTEGER,
            gpu_mem_bytes INTEGER,
            error TEXT,
            outputs_json TEXT,
            PRIMARY KEY (run_id, name)
        );
        """
    )


@migration
def m002_variants(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE variants (
            sha256 TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            quant TEXT NOT NULL,
            model_name TEXT,
            checkpoint_sha256 TEXT,
            size_bytes INTEGER,
            toolchain TEXT,
            manifest_json TEXT,
            created_at TEXT NOT NULL
        );
        """
    )


@migration
def m003_evaluations(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE evals (
            id INTEGER PRIMARY KEY,
            cache_key TEXT NOT NULL UNIQUE,
            model_id TEXT NOT NULL,
            backend TEXT NOT NULL,
            task TEXT NOT NULL,
            task_hash TEXT,
            task_version TEXT,
            n_shot INTEGER,
            selection_json TEXT,
            gen_args_json TEXT,
            harness_version TEXT,
            aggregates_json TEXT,
            env_json TEXT,
            seconds REAL,
            tokens INTEGER,
            n_items INTEGER,
            output_dir TEXT,
            created_at TEXT NOT NULL
        );
        CREATE TABLE items (
            eval_id INTEGER NOT NULL REFERENCES evals(id) ON DELETE CASCADE,
            task TEXT NOT NULL,
            task_group TEXT,
            doc_id INTEGER NOT NULL,
            doc_hash TEXT,
            filter TEXT NOT NULL DEFAULT 'none',
            metric TEXT NOT NULL,
            value REAL,
            choice_ll_json TEXT,
            question TEXT,
            target TEXT,
            response TEXT,
            cluster TEXT,
            think_sha256 TEXT,
            PRIMARY KEY (eval_id, task, doc_id, filter, metric)
        );
        CREATE INDEX items_by_hash ON items(task, doc_hash);
        """
    )


@migration
def m004_run_links_watch_and_registrations(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE run_evals (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            label TEXT NOT NULL,
            eval_id INTEGER NOT NULL REFERENCES evals(id),
            PRIMARY KEY (run_id, role, label, eval_id)
        );
        CREATE TABLE processed_checkpoints (
            checkpoint_sha256 TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            run_id TEXT,
            status TEXT NOT NULL,
            first_seen TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE registrations (
            variant_sha256 TEXT NOT NULL,
            ollama_url TEXT NOT NULL,
            name TEXT NOT NULL,
            blob_digest TEXT NOT NULL,
            params_json TEXT,
            template_set INTEGER NOT NULL DEFAULT 0,
            smoke_text TEXT,
            smoke_latency_s REAL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (ollama_url, name)
        );
        """
    )


def _unusable(path: Path, e: sqlite3.DatabaseError) -> PosttrainError:
    """The store could not be opened: say which file, why, and what to do."""
    if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
        return PosttrainError(f"{path} is locked by another process ({e})", remedy="try again when it is done")
    if isinstance(e, sqlite3.OperationalError) and "unable to open" in str(e):
        return PosttrainError(f"cannot open {path}: {e}", remedy="make its folder writable or pass --home DIR")
    return PosttrainError(f"{path} is not a usable posttrain store: {e}",
                          remedy="if it is damaged, move it aside (posttrain then starts a new one) "
                                 "or pass --home DIR")


class Store:
    """One SQLite file. Safe to share between threads of one process (one connection per thread)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        try:
            with self.connect() as db:
                self._migrate(db)
        except sqlite3.DatabaseError as e:
            self.close()
            raise _unusable(self.path, e) from None

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # WAL lets the watcher, `posttrain status` and a run read and write at once.
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A transaction: committed on success, rolled back on error."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self._connection().execute(sql, params).fetchall()

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
        for name, fn in MIGRATIONS:
            if name not in done:
                fn(db)
                db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, utcnow()))

    def applied_migrations(self) -> list[str]:
        return [r[0] for r in self.query("SELECT name FROM _migrations ORDER BY rowid")]

    # -- per-item results (evaluate writes them; compare and the report read them through here) ------
    def items(self, eval_ids: list[int]) -> list[ItemResult]:
        """The per-item results of these evaluations, in a stable order. Items without a value
        (a metric lm-eval could not compute) are left out: nothing can be paired on them."""
        marks = ",".join("?" * len(eval_ids))
        rows = self.query(f"SELECT task, task_group, doc_id, doc_hash, filter, metric, value, cluster, question, "
                          f"target, response FROM items WHERE eval_id IN ({marks}) ORDER BY task, doc_id, filter, "
                          f"metric", tuple(eval_ids))
        return [ItemResult(task=r["task"], group=r["task_group"], doc_id=int(r["doc_id"]),
                           doc_hash=r["doc_hash"] or f"doc_id:{r['doc_id']}", filter=r["filter"] or "none",
                           metric=r["metric"], value=float(r["value"]), cluster=r["cluster"],
                           question=r["question"], target=r["target"], response=r["response"])
                for r in rows if r["value"] is not None]

    def eval_models(self, eval_ids: list[int]) -> dict[int, str]:
        """eval id → the model id it evaluated, for the ids that exist."""
        marks = ",".join("?" * len(eval_ids))
        return {r["id"]: r["model_id"] for r in self.query(f"SELECT id, model_id FROM evals WHERE id IN ({marks})",
                                                            tuple(eval_ids))}


def dumps(obj: object) -> str:
    """JSON for the store: stable key order so equal content compares equal."""
    return json.dumps(obj, sort_keys=True, default=str)


@migration
def m005_pipeline_step_inputs_and_owner(db: sqlite3.Connection) -> None:
    # inputs_sha256: a finished step is reused only while the outputs it was computed from are unchanged.
    # owner_pid: which process drives a run, so `posttrain status` can tell a live run from a crashed one.
    _script(
        db,
        """
        ALTER TABLE steps ADD COLUMN inputs_sha256 TEXT;
        ALTER TABLE runs ADD COLUMN owner_pid INTEGER
        """
    )
