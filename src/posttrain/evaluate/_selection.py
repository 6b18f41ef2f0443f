"""Item subsets that stay paired: the same (task, seed, N) picks the same documents for every model.

Each leaf task draws from its own generator, seeded from (seed, leaf name), as a prefix of a
seeded permutation of its document indices: so N=50 is a superset of N=20, and adding or removing
a subject does not change what another subject picks. A group (MMLU) is stratified by its leaves
(the subjects): `per_subject` takes N from each, `limit` splits N across them in proportion to
their sizes (largest remainder).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from posttrain.errors import PosttrainError


@dataclass(frozen=True)
class Selection:
    """Which documents of each leaf task are evaluated. `indices` is None when all of them are."""

    mode: str  # "all", "limit", "per_subject"
    n: int | None
    seed: int
    indices: dict[str, list[int]] | None = field(default=None)

    def to_json(self) -> dict:
        return {"mode": self.mode, "n": self.n, "seed": self.seed, "indices": self.indices}

def _permutation(leaf: str, seed: int, size: int) -> list[int]:
    digest = hashlib.sha256(f"posttrain-selection|{seed}|{leaf}".encode()).digest()
    order = list(range(size))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def _take(leaf: str, seed: int, size: int, k: int) -> list[int]:
    return sorted(_permutation(leaf, seed, size)[: min(k, size)])


def _proportional(sizes: dict[str, int], n: int) -> dict[str, int]:
    """One item per leaf first (an empty selection would make lm-eval run the whole leaf), then the rest
    in proportion to what each leaf has left, by largest remainder with ties broken by name."""
    if n >= sum(sizes.values()):
        return dict(sizes)
    alloc = {leaf: 1 for leaf in sizes}
    spare = {leaf: size - 1 for leaf, size in sizes.items()}
    extra, total = n - len(sizes), sum(spare.values())
    quotas = {leaf: extra * s / total if total else 0.0 for leaf, s in spare.items()}
    for leaf, q in quotas.items():
        alloc[leaf] += int(q)
    rest = sorted(sizes, key=lambda leaf: (-(quotas[leaf] - int(quotas[leaf])), leaf))
    for leaf in rest[: n - sum(alloc.values())]:
        alloc[leaf] += 1
    return alloc


def check_subset_options(limit: int | None, per_subject: int | None) -> None:
    """Refuse a subset size that is not a positive integer, before any task or data is loaded."""
    for flag, value in (("--limit", limit), ("--per-subject", per_subject)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PosttrainError(f"{flag} must be a positive integer, got {value!r}",
                                 remedy=f"pass {flag} 1 or more, or leave it out to evaluate every item")


def select(leaf_sizes: dict[str, int], *, limit: int | None, per_subject: int | None, seed: int) -> Selection:
    """Pick documents from leaf tasks of one requested task (a single leaf, or a group's leaves).

    `per_subject` applies to a task that has subjects (a group of several leaves, as MMLU); every
    other task keeps `limit`, or all its items. So `--per-subject 2` never cuts HellaSwag or GSM8K to
    2 items, and `--limit 20 --per-subject 1` means 1 item per MMLU subject and 20 of every other task.
    """
    check_subset_options(limit, per_subject)
    has_subjects = len(leaf_sizes) > 1
    if per_subject is not None and has_subjects:
        counts = {leaf: per_subject for leaf in leaf_sizes}
        mode, n = "per_subject", per_subject
    elif limit is not None:
        if not has_subjects:
            counts = {leaf: limit for leaf in leaf_sizes}
        elif limit < len(leaf_sizes):
            raise PosttrainError(
                f"--limit {limit} is smaller than the number of subjects ({len(leaf_sizes)}), so some would have no item",
                remedy=f"use --limit {len(leaf_sizes)} or more, or --per-subject N")
        else:
            counts = _proportional(leaf_sizes, limit)
        mode, n = "limit", limit
    else:
        return Selection("all", None, seed)
    indices = {leaf: _take(leaf, seed, leaf_sizes[leaf], counts[leaf]) for leaf in sorted(leaf_sizes)}
    return Selection(mode, n, seed, indices)
