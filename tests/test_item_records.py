"""One lm-eval sample → item records (posttrain._lm_eval_items, for evaluate and compare alike), and
the store's one writer and one reader of them (contracts.ItemRecord, contracts.ItemResult)."""

from __future__ import annotations

import pytest

from posttrain._lm_eval_items import QUESTION_CHARS, sample_items
from posttrain.contracts import ItemRecord, ItemResult
from posttrain.errors import PosttrainError
from posttrain.store import Store


def test_one_sample_becomes_records_with_one_question_cap(tmp_path):
    sample = {"doc_id": 3, "doc_hash": "h", "filter": "none", "metrics": ["acc", "bleu"], "acc": True,
              "bleu": [["ref"], ["pred"]]}
    records = sample_items(sample, "f:1", task="t", group=None, question="q" * 1000,
                           answers=lambda metric: ("A", "B"), cluster=None)
    assert [(r.metric, r.value) for r in records] == [("acc", 1.0), ("bleu", None)]
    assert len(records[0].question) == QUESTION_CHARS and records[0].question.endswith("…")
    with pytest.raises(PosttrainError, match="f:1: the sample has no integer doc_id"):
        sample_items({"doc_id": True}, "f:1", task="t", group=None, question=None,
                     answers=lambda metric: (None, None), cluster=None)

    # The store keeps the record without a value, and its reader leaves it out (nothing to pair).
    store = Store(tmp_path / "posttrain.db")
    no_hash = ItemRecord(task="t", group=None, doc_id=4, doc_hash=None, filter="none", metric="acc", value=0.0,
                         choice_ll=(-1.5, -2.0), think_sha256="ab")
    record = {"model_id": "m", "backend": "posttrain-llamacpp", "task": "t", "task_hash": "h", "task_version": "1",
              "n_shot": 0, "harness_version": "0.4.13", "seconds": 1.0, "n_items": 2}
    eval_id = store.evals.save("k", record, [*records, no_hash])
    rows = store.query("SELECT metric, value, choice_ll_json, think_sha256 FROM items ORDER BY rowid")
    assert [tuple(r) for r in rows] == [("acc", 1.0, None, None), ("bleu", None, None, None),
                                        ("acc", 0.0, "[-1.5, -2.0]", "ab")]
    assert store.evals.items([eval_id]) == [
        records[0].result(),
        ItemResult(task="t", group=None, doc_id=4, doc_hash="doc_id:4", filter="none", metric="acc", value=0.0)]
