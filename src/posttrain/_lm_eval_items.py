"""One lm-eval logged sample → its per-item records (`contracts.ItemRecord`), one per metric it scored.

Two callers read samples: evaluate, as lm-eval hands them back in this process (with the task
object, which renders the question and the options), and compare, from the `samples_*.jsonl` of a
folder a user names (only the logged prompt and continuations). Each reads the question and the
answers its own way and passes them in; what an item is — its document id and hash, filter, metrics
and values, and how much text is kept — is decided here once. A sample may come from a file from
outside, so a field of the wrong type is a PosttrainError that names `where` (file:line), never a
KeyError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from posttrain.contracts import ItemRecord
from posttrain.errors import PosttrainError

# Text kept for a person to read (the report's example items): the question is a reminder of the
# item, not the item; the gold and the model's answer are what differ between models.
QUESTION_CHARS = 400
TEXT_CHARS = 2000
RERUN = "the file is truncated or damaged; rerun lm-eval with --log_samples"
# Keys of a logged sample that are never metrics.
SAMPLE_KEYS = frozenset({"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
                         "doc_hash", "prompt_hash", "target_hash"})

# (target, response) as a person reads them, for one metric (acc_norm may pick another option).
Answers = Callable[[str], tuple[object, object]]


def short(text: object, limit: int) -> str | None:
    """`text` as a string of at most `limit` characters, an ellipsis where it was cut."""
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def doc_id(sample: dict, where: str) -> int:
    value = sample.get("doc_id")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise PosttrainError(f"{where}: the sample has no integer doc_id", remedy=RERUN)


def metric_names(sample: dict, where: str) -> list[str]:
    """The metrics the sample names, else its keys that hold a number (older lm-eval logs no list)."""
    named = sample.get("metrics")
    if named is None or named == []:
        return [k for k, v in sample.items() if k not in SAMPLE_KEYS
                and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not (isinstance(named, list) and all(isinstance(m, str) for m in named)):
        raise PosttrainError(f"{where}: \"metrics\" is not a list of metric names", remedy=RERUN)
    return named


def sample_items(sample: dict, where: str, *, task: str, group: str | None, question: object, answers: Answers,
                 cluster: str | None, metrics: Sequence[str] | None = None,
                 choice_ll: tuple[float, ...] | None = None, think_sha256: str | None = None) -> list[ItemRecord]:
    """The records of one sample: one per metric present in it (`metrics`, else those the sample
    names); `value` is None where the metric's value is not a number (lm-eval logs tuples for bleu)."""
    doc = doc_id(sample, where)
    names = metric_names(sample, where) if metrics is None else metrics
    doc_hash = sample.get("doc_hash")
    records = []
    for metric in names:
        if metric not in sample:
            continue
        value = sample[metric]
        target, response = answers(metric)
        records.append(ItemRecord(
            task=task, group=group, doc_id=doc, doc_hash=str(doc_hash) if doc_hash else None,
            filter=str(sample.get("filter") or "none"), metric=metric,
            value=float(value) if isinstance(value, int | float | bool) else None, cluster=cluster,
            question=short(question, QUESTION_CHARS), target=short(target, TEXT_CHARS),
            response=short(response, TEXT_CHARS), choice_ll=choice_ll, think_sha256=think_sha256))
    return records
