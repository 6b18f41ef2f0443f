"""The store's schema grows by named migrations: a store made by an older posttrain, holding rows, is
upgraded to the current schema on open with nothing lost."""

from __future__ import annotations

import sqlite3

from posttrain.store import MIGRATIONS, Store, utcnow


def _old_store(path, upto: int) -> None:
    """A store as a posttrain that knew only the first `upto` migrations left it."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    for name, fn in MIGRATIONS[:upto]:
        db.execute("BEGIN")
        fn(db)
        db.execute("INSERT INTO _migrations VALUES (?, ?)", (name, utcnow()))
        db.execute("COMMIT")
    db.close()


def test_a_store_from_the_first_migration_is_upgraded_with_its_rows(tmp_path):
    path = tmp_path / "posttrain.db"
    _old_store(path, upto=1)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO runs (id, checkpoint, checkpoint_sha256, status, created_at, run_dir) "
               "VALUES ('r1', '/ckpt', 'abc', 'succeeded', '2026-01-01T00:00:00+00:00', '/runs/r1')")
    db.execute("INSERT INTO steps (run_id, name, status, attempts, wall_s, outputs_json) "
               "VALUES ('r1', 'convert', 'done', 1, 2.5, '{\"x\": 1}')")
    db.close()

    store = Store(path)
    assert store.applied_migrations() == [name for name, _ in MIGRATIONS]
    run = dict(store.query("SELECT * FROM runs WHERE id='r1'")[0])
    assert run["checkpoint_sha256"] == "abc" and run["status"] == "succeeded" and run["owner_pid"] is None
    step = dict(store.query("SELECT * FROM steps WHERE run_id='r1'")[0])
    assert step["outputs_json"] == '{"x": 1}' and step["wall_s"] == 2.5 and step["inputs_sha256"] is None
    # Every later table exists and takes rows.
    tables = {r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"variants", "evals", "items", "run_evals", "processed_checkpoints", "registrations"} <= tables


def test_each_intermediate_schema_upgrades_too(tmp_path):
    for upto in range(1, len(MIGRATIONS) + 1):
        path = tmp_path / f"store-{upto}.db"
        _old_store(path, upto)
        assert Store(path).applied_migrations() == [name for name, _ in MIGRATIONS]


def test_migration_names_are_unique_and_numbered_in_order():
    names = [name for name, _ in MIGRATIONS]
    assert len(set(names)) == len(names)
    numbers = [int(name[1:4]) for name in names]
    assert numbers == sorted(numbers) and all(name.startswith("m") for name in names)


def test_only_the_store_speaks_sql():
    """The store owns its SQL: a statement anywhere else in posttrain would bypass its repositories
    (and the single writer of a run's status)."""
    import re
    from pathlib import Path

    import posttrain

    root = Path(posttrain.__file__).parent
    statement = re.compile(r"""["'](SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER)\s""")
    offenders = [f"{p.relative_to(root)}:{n}" for p in root.rglob("*.py") if "store" not in p.relative_to(root).parts
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if statement.search(line)]
    assert offenders == []
