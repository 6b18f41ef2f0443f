"""The store's schema, grown by an append-only list of named migrations.

Each migration is applied once, in order, in one transaction, and recorded in `_migrations`. Never
edit or reorder a migration that has shipped: append a new one at the end of this file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

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
