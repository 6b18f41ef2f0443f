"""Evaluations and their per-item results in the store, and the cache that reuses them.

One `evals` row per (model, requested task, key); one `items` row per (leaf task, document, filter,
metric). The cache key covers everything that can change a number: the model's content hash,
the task's name and content hash (its config and the selected documents), the number of shots,
the item selection, the generation arguments (think patterns included), the harness and backend.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from posttrain._ci import mean_interval
from posttrain.contracts import ItemRecord, ItemResult
from posttrain.store import Store, dumps

# Bump when what posttrain stores for the same lm-eval output changes.
STORAGE_FORMAT = "posttrain.evaluate/1"


def cache_key(parts: dict) -> str:
    return hashlib.sha256(dumps({"format": STORAGE_FORMAT, **parts}).encode()).hexdigest()


@dataclass(frozen=True)
class MetricValue:
    metric: str
    filter: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    stderr: float | None = None


@dataclass(frozen=True)
class EvalResult:
    """One requested task's outcome for one model."""

    task: str
    metrics: list[MetricValue]
    n: int
    seconds: float
    tokens: int | None
    eval_id: int
    cached: bool
    model_id: str = ""
    backend: str = ""
    output_dir: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float | None:
        if not self.tokens or not self.seconds:
            return None
        return self.tokens / self.seconds

    def value(self, metric: str, filter: str = "none") -> float | None:
        for m in self.metrics:
            if m.metric == metric and m.filter == filter:
                return m.value
        return None


def confidence_interval(values: list[float]) -> tuple[float | None, float | None]:
    """95% CI of a mean score: the one method posttrain uses everywhere (posttrain._ci)."""
    ci = mean_interval(values)["ci"]
    return (ci[0], ci[1]) if ci else (None, None)


def metrics_from_items(items: list[ItemRecord], aggregates: dict) -> list[MetricValue]:
    """Per (metric, filter): lm-eval's aggregate value and stderr, with a 95% CI from the items."""
    by_key: dict[tuple[str, str], list[float]] = {}
    for item in items:
        if item.value is not None:
            by_key.setdefault((item.metric, item.filter), []).append(item.value)
    out = []
    for (metric, filt), values in sorted(by_key.items()):
        value = aggregates.get(f"{metric},{filt}")
        if not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)):
            value = sum(values) / len(values)
        stderr = aggregates.get(f"{metric}_stderr,{filt}")
        stderr = float(stderr) if isinstance(stderr, int | float) and not math.isnan(stderr) else None
        lo, hi = confidence_interval(values)
        out.append(MetricValue(metric, filt, float(value), lo, hi, len(values), stderr))
    return out


def metrics_to_json(metrics: list[MetricValue]) -> list[dict]:
    return [m.__dict__ for m in metrics]


def metrics_from_json(data: list[dict]) -> list[MetricValue]:
    return [MetricValue(**m) for m in data]


def items_for_eval(store: Store, eval_id: int) -> list[ItemResult]:
    """The per-item results of one evaluation (the store's one reader of them)."""
    return store.evals.items([eval_id])
