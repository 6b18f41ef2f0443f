"""The SQLite file itself: connections (one per thread), transactions, migrating on open."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from posttrain import _files
from posttrain.errors import PosttrainError
from posttrain.store._migrations import MIGRATIONS


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def dumps(obj: object) -> str:
    """JSON for the store: stable key order so equal content compares equal."""
    return json.dumps(obj, sort_keys=True, default=str)


def loads(text: str | None) -> object:
    """A JSON column back, or None for an empty or unreadable one (a damaged cell is not a crash)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _unusable(path: Path, e: sqlite3.DatabaseError) -> PosttrainError:
    """The store could not be opened: say which file, why, and what to do."""
    if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
        return PosttrainError(f"{path} is locked by another process ({e})", remedy="try again when it is done")
    if isinstance(e, sqlite3.OperationalError) and "unable to open" in str(e):
        return PosttrainError(f"cannot open {path}: {e}", remedy="make its folder writable or pass --home DIR")
    return PosttrainError(f"{path} is not a usable posttrain store: {e}",
                          remedy="if it is damaged, move it aside (posttrain then starts a new one) "
                                 "or pass --home DIR")


class Database:
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
        _files.about_to_write(self.path)  # the harness's fault seam (looked up on each call, to be wrapped)
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        """Read-only SQL for the repositories of this package, and for tests and ad-hoc inspection.
        Code outside `posttrain.store` goes through the repositories instead."""
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
