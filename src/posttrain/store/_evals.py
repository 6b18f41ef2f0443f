"""The `evals` and `items` tables (an evaluation and its per-item results, written together) and
`run_evals` (which evaluations belong to a run, under which role and label).

evaluate writes; compare, the report and `runs` read.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from posttrain.contracts import ItemRecord, ItemResult
from posttrain.store._db import Database, utcnow

ITEM_COLUMNS = ("task", "task_group", "doc_id", "doc_hash", "filter", "metric", "value", "choice_ll_json",
                "question", "target", "response", "cluster", "think_sha256")
EVAL_COLUMNS = ("model_id", "backend", "task", "task_hash", "task_version", "n_shot", "selection_json",
                "gen_args_json", "harness_version", "aggregates_json", "env_json", "seconds", "tokens", "n_items",
                "output_dir")


def _marks(values: list) -> str:
    return ",".join("?" * len(values))


def _item_columns(r: ItemRecord) -> dict[str, Any]:
    """An item's value for each of ITEM_COLUMNS (the log-likelihoods as the JSON list the column holds)."""
    return {"task": r.task, "task_group": r.group, "doc_id": r.doc_id, "doc_hash": r.doc_hash, "filter": r.filter,
            "metric": r.metric, "value": r.value,
            "choice_ll_json": json.dumps(list(r.choice_ll)) if r.choice_ll is not None else None,
            "question": r.question, "target": r.target, "response": r.response, "cluster": r.cluster,
            "think_sha256": r.think_sha256}


class Evals:
    def __init__(self, db: Database):
        self._db = db

    def by_key(self, cache_key: str) -> dict[str, Any] | None:
        rows = self._db.query("SELECT * FROM evals WHERE cache_key = ?", (cache_key,))
        return dict(rows[0]) if rows else None

    def save(self, cache_key: str, record: dict[str, Any], items: Sequence[ItemRecord]) -> int:
        """Insert the evaluation and all its items in one transaction; returns the eval id.

        When another process stored the same key meanwhile (two runs of one baseline), its row is kept
        and returned: the results are interchangeable by construction of the key.
        """
        try:
            with self._db.connect() as db:
                cur = db.execute(
                    f"INSERT INTO evals (cache_key, created_at, {', '.join(EVAL_COLUMNS)}) "
                    f"VALUES (?, ?, {_marks(list(EVAL_COLUMNS))})",
                    (cache_key, utcnow(), *(record.get(c) for c in EVAL_COLUMNS)))
                eval_id = int(cur.lastrowid)
                db.executemany(
                    f"INSERT INTO items (eval_id, {', '.join(ITEM_COLUMNS)}) VALUES (?, {_marks(list(ITEM_COLUMNS))})",
                    [(eval_id, *(row[c] for c in ITEM_COLUMNS)) for row in map(_item_columns, items)])
            return eval_id
        except sqlite3.IntegrityError:
            row = self.by_key(cache_key)
            if row is None:
                raise
            return int(row["id"])

    def items(self, eval_ids: list[int]) -> list[ItemResult]:
        """The per-item results of these evaluations, in a stable order. Items without a value
        (a metric lm-eval could not compute) are left out: nothing can be paired on them."""
        rows = self._db.query(
            f"SELECT task, task_group, doc_id, doc_hash, filter, metric, value, cluster, question, target, response "
            f"FROM items WHERE eval_id IN ({_marks(eval_ids)}) ORDER BY task, doc_id, filter, metric", tuple(eval_ids))
        records = (ItemRecord(task=r["task"], group=r["task_group"], doc_id=int(r["doc_id"]), doc_hash=r["doc_hash"],
                              filter=r["filter"] or "none", metric=r["metric"],
                              value=None if r["value"] is None else float(r["value"]), cluster=r["cluster"],
                              question=r["question"], target=r["target"], response=r["response"]) for r in rows)
        return [item for record in records if (item := record.result()) is not None]

    def scores(self, eval_id: int) -> list[dict[str, Any]]:
        """(task or its group, filter, metric, value) of each item that has a value: what a score is made of."""
        return [dict(r) for r in self._db.query(
            "SELECT COALESCE(task_group, task) AS t, filter, metric, value FROM items "
            "WHERE eval_id = ? AND value IS NOT NULL", (eval_id,))]

    def models(self, eval_ids: list[int]) -> dict[int, str]:
        """eval id → the model id it evaluated, for the ids that exist."""
        return {r["id"]: r["model_id"] for r in self._db.query(
            f"SELECT id, model_id FROM evals WHERE id IN ({_marks(eval_ids)})", tuple(eval_ids))}


    def settings(self, eval_ids: list[int]) -> dict[str, dict[str, Any]]:
        """task → its version and number of shots, as these evaluations ran it."""
        return {r["task"]: {"version": r["task_version"], "n_shot": r["n_shot"]} for r in self._db.query(
            f"SELECT task, task_version, n_shot FROM evals WHERE id IN ({_marks(eval_ids)})", tuple(eval_ids))}


class RunEvals:
    def __init__(self, db: Database):
        self._db = db

    def link(self, run_id: str, role: str, label: str, eval_ids: Iterable[int]) -> None:
        with self._db.connect() as db:
            for eid in eval_ids:
                db.execute("INSERT OR IGNORE INTO run_evals (run_id, role, label, eval_id) VALUES (?, ?, ?, ?)",
                           (run_id, role, label, eid))

    def ids(self, run_id: str, label: str) -> list[int]:
        """The evaluations of a run under this label, or else under this role ("baseline")."""
        for column in ("label", "role"):
            rows = self._db.query(f"SELECT eval_id FROM run_evals WHERE run_id = ? AND {column} = ?", (run_id, label))
            if rows:
                return sorted({int(r["eval_id"]) for r in rows})
        return []

    def labels(self, run_id: str) -> list[tuple[str, str]]:
        """(role, label) pairs the run has."""
        return [(r["role"], r["label"]) for r in self._db.query(
            "SELECT DISTINCT role, label FROM run_evals WHERE run_id = ?", (run_id,))]

    def evals(self, run_id: str) -> list[dict[str, Any]]:
        """Each evaluation linked to the run, with the role and label it has there."""
        return [dict(r) for r in self._db.query(
            "SELECT re.role, re.label, e.* FROM run_evals re JOIN evals e ON e.id = re.eval_id "
            "WHERE re.run_id = ? ORDER BY re.role DESC, re.label, e.task", (run_id,))]
