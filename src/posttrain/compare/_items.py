"""The per-item record that evaluate produces and compare consumes (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ItemResult:
    """One item's score for one (leaf task, filter, metric), with enough context to show it to a person."""

    task: str
    group: str | None
    doc_id: int
    doc_hash: str
    filter: str
    metric: str
    value: float
    cluster: str | None = None
    question: str | None = None
    target: str | None = None
    response: str | None = None
