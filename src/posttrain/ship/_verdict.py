"""The answer: which variant to ship, and how strong the evidence for it is.

Every (variant, task) pair gets a TOST against F16; Holm adjusts the whole family (tasks × variants)
so that "equivalent on every task" holds at α overall. A variant is *undecided* when it is neither
shown equivalent nor shown to lose more than the margin (its 95% CI crosses a margin) and the items at
hand could not have shown equivalence (smallest demonstrable margin above the margin): then more
items, not a different variant, would answer the question.

The pick comes at one of three strengths (`strength`):
- *shown*: the smallest file equivalent on every task whose mean KLD is at most `max_kld` (a task
  set can miss damage that the held-out text shows);
- *indicated*: no variant is shown, but the held-out text indicates one (`_indicated.py`): the
  smallest variant the tasks cannot decide whose mean KLD is shown under a published bound;
- *none*: neither; F16 stays, and the sentence says which variant is shown worse or what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from posttrain.ship._indicated import INDICATED_RATE, indicate, kld_bound, kld_upper95
from posttrain.ship._sentence import fmt_margin, sentence
from posttrain.ship._tost import holm_adjusted, tost

__all__ = ["DEFAULT_MARGIN_POINTS", "DEFAULT_MAX_KLD", "Rung", "Strength", "decide", "fmt_margin"]

DEFAULT_MARGIN_POINTS = 1.0
# Mean KLD (nats) above which a variant is not picked whatever the tasks say: several times the
# published Q4_K_M figure for an 8B model (0.031), which small models exceed a little.
DEFAULT_MAX_KLD = 0.1

Strength = Literal["shown", "indicated", "none"]


@dataclass
class Rung:
    """One variant of the ladder as the verdict sees it."""

    quant: str
    size_bytes: int
    bits_per_weight: float | None = None
    tg_tok_s: float | None = None
    kld_mean: float | None = None
    # task → per-item differences variant − F16 (metric units), and the items' clusters (or None)
    diffs: dict[str, np.ndarray] = field(default_factory=dict)
    clusters: dict[str, np.ndarray | None] = field(default_factory=dict)
    # The size the ladder orders by: a variant made with an importance matrix takes its plain twin's
    # (its file is a few hundred bytes larger, only for the matrix's metadata).
    order_size: int | None = None
    kld_se: float | None = None  # standard error of kld_mean (over scored tokens, as llama.cpp prints it)
    speed_busy: bool = False  # its speed was measured while other work used the CPUs (posttrain/_run_conditions.py)


def decide(rungs: list[Rung], *, margin: float = DEFAULT_MARGIN_POINTS / 100, alpha: float = 0.05,
           max_kld: float | None = DEFAULT_MAX_KLD, indicate_kld: float | None = None) -> dict:
    """The verdict document: per variant and task the TOST with Holm-adjusted p, a status per variant,
    the pick (or None), its strength and the one-sentence answer. `margin` in metric units (0.01 = 1
    point); `indicate_kld`: the mean-KLD bound of an indicated pick (default `kld_bound(margin)`)."""
    tests = [(r.quant, task, tost(d, margin, alpha, r.clusters.get(task)))
             for r in rungs for task, d in sorted(r.diffs.items())]
    if tests:
        adjusted = holm_adjusted([t["p_value"] for _, _, t in tests])
        for (_, _, t), p_adj in zip(tests, adjusted):
            t["p_adjusted"] = float(p_adj)
            t["equivalent_holm"] = bool(p_adj < alpha)
            lo, hi = t["ci95"] or (None, None)
            t["shown_worse"] = hi is not None and hi < -margin
            t["undecided"] = (not t["equivalent_holm"] and not t["shown_worse"]
                              and (t["mde"] is None or t["mde"] > margin))
    by_variant: dict[str, dict] = {r.quant: {} for r in rungs}
    for quant, task, t in tests:
        by_variant[quant][task] = t
    variants = []
    # Smallest first; of two the same size (a quant with and without an importance matrix), the one
    # closer to F16 on the held-out text first, so it is the one picked when both are equivalent.
    for r in sorted(rungs, key=lambda r: (r.order_size or r.size_bytes,
                                          r.kld_mean if r.kld_mean is not None else float("inf"))):
        per_task = by_variant[r.quant]
        # Unmeasured KLD (no held-out text) cannot veto: the tasks alone decide then.
        kld_ok = max_kld is None or r.kld_mean is None or r.kld_mean <= max_kld
        if not per_task:
            status = "no tasks"
        elif all(t["equivalent_holm"] for t in per_task.values()):
            status = "equivalent" if kld_ok else "kld above bound"
        elif any(t["undecided"] for t in per_task.values()):
            status = "undecided"
        else:
            status = "not equivalent"
        variants.append({"quant": r.quant, "size_bytes": r.size_bytes, "bits_per_weight": r.bits_per_weight,
                         "tg_tok_s": r.tg_tok_s, "speed_busy": r.speed_busy, "kld_mean": r.kld_mean,
                         "kld_se": r.kld_se, "kld_upper95": kld_upper95(r.kld_mean, r.kld_se), "kld_ok": kld_ok,
                         "status": status, "tasks": per_task})
    bound = kld_bound(margin) if indicate_kld is None else indicate_kld
    shown = next((v for v in variants if v["status"] == "equivalent"), None)
    indication = None if shown is not None else indicate(variants, margin, bound)
    strength: Strength = "shown" if shown else "indicated" if indication else "none"
    pick = shown or (next(v for v in variants if v["quant"] == indication.quant) if indication else None)
    return {"margin": margin, "alpha": alpha, "max_kld": max_kld, "correction": "holm",
            "pick": pick["quant"] if pick else None, "strength": strength,
            "indicate_kld": bound, "indicated_rate": INDICATED_RATE,
            "indicated": indication.to_json() if indication else None, "variants": variants,
            "sentence": sentence(variants, pick, strength, indication, margin, alpha, max_kld, bound)}
