"""The answer: which variant to ship, from equivalence tests on every task and KLD on real text.

Every (variant, task) pair gets a TOST against F16; Holm adjusts the whole family (tasks × variants)
so that "equivalent on every task" holds at α overall. The pick is the smallest file that is
equivalent on every task and whose mean KLD is at most `max_kld` (a task set can miss damage that
the held-out text shows). A variant is *undecided* when it is neither shown equivalent nor shown to
lose more than the margin (its 95% CI crosses a margin) and the items at hand could not have shown
equivalence (smallest demonstrable margin above the margin): then more items, not a different
variant, would answer the question, and the sentence says how many.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from statsmodels.stats.multitest import multipletests

from posttrain.checkpoint import human_bytes
from posttrain.ship._tost import tost

DEFAULT_MARGIN_POINTS = 1.0
# Mean KLD (nats) above which a variant is not picked whatever the tasks say: several times the
# published Q4_K_M figure for an 8B model (0.031), which small models exceed a little.
DEFAULT_MAX_KLD = 0.1


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


def _pts(x: float) -> str:
    return f"{abs(x) * 100:.1f}"


def fmt_margin(margin: float) -> str:
    pts = margin * 100
    return f"{pts:g} point" + ("" if pts == 1 else "s")


def decide(rungs: list[Rung], *, margin: float = DEFAULT_MARGIN_POINTS / 100, alpha: float = 0.05,
           max_kld: float | None = DEFAULT_MAX_KLD) -> dict:
    """The verdict document: per variant and task the TOST with Holm-adjusted p, a status per variant,
    the pick (or None) and the one-sentence answer. `margin` in metric units (0.01 = 1 point)."""
    tests = [(r.quant, task, tost(d, margin, alpha, r.clusters.get(task)))
             for r in rungs for task, d in sorted(r.diffs.items())]
    if tests:
        adjusted = multipletests([t["p_value"] for _, _, t in tests], alpha=alpha, method="holm")[1]
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
                         "tg_tok_s": r.tg_tok_s, "kld_mean": r.kld_mean, "kld_ok": kld_ok, "status": status,
                         "tasks": per_task})
    pick = next((v for v in variants if v["status"] == "equivalent"), None)
    return {"margin": margin, "alpha": alpha, "max_kld": max_kld, "correction": "holm",
            "pick": pick["quant"] if pick else None, "variants": variants,
            "sentence": _sentence(variants, pick, margin, alpha, max_kld)}


def _describe(v: dict) -> str:
    parts = []
    if v["bits_per_weight"]:
        parts.append(f"{v['bits_per_weight']:.1f} bits/weight")
    parts.append(human_bytes(v["size_bytes"]))
    if v["tg_tok_s"]:
        parts.append(f"{v['tg_tok_s']:.0f} tok/s")
    return ", ".join(parts)


def _why_not(v: dict, margin: float, max_kld: float | None) -> str:
    """Why the next smaller variant was not picked, in a clause."""
    if v["status"] == "kld above bound":
        return f"{v['quant']} is equivalent on the tasks but its mean KLD {v['kld_mean']:.3f} exceeds {max_kld:g}"
    worst_task, worst = min(v["tasks"].items(), key=lambda kv: (kv[1]["equivalent_holm"], kv[1]["mean"] or 0))
    if worst["mean"] is None or worst["ci95"] is None:
        return f"{v['quant']} has too few items on {worst_task} to test"
    lo, hi = worst["ci95"] or (0.0, 0.0)
    verb = "loses" if worst["mean"] < 0 else "gains"
    ci = f"{_pts(hi)}–{_pts(lo)}" if worst["mean"] < 0 else f"{_pts(lo)}–{_pts(hi)}"
    if lo < 0 < hi:
        ci = f"{lo * 100:+.1f} to {hi * 100:+.1f}"
    tail = "" if worst["shown_worse"] else f", not shown within {fmt_margin(margin)}"
    return f"{v['quant']} {verb} {_pts(worst['mean'])} points on {worst_task} (95% CI {ci}){tail}"


def _sentence(variants: list[dict], pick: dict | None, margin: float, alpha: float, max_kld: float | None) -> str:
    tested = [v for v in variants if v["tasks"]]
    if not tested:
        return "No task results to decide on: run the ladder with --tasks."
    if pick is not None:
        smaller = [v for v in tested if v["size_bytes"] < pick["size_bytes"]]
        text = (f"Ship {pick['quant']} ({_describe(pick)}): it loses no more than {fmt_margin(margin)} against F16 "
                f"on every task (equivalence shown at α {alpha:g}, Holm over tasks × variants)")
        if smaller:
            text += "; " + _why_not(smaller[-1], margin, max_kld)
        return text + "."
    undecided = [(v, task, t) for v in tested for task, t in v["tasks"].items() if t["undecided"]]
    if undecided:
        _, task, t = max(undecided, key=lambda x: x[2]["items_needed"] or 0)
        need = t["items_needed"]
        return (f"The data cannot decide: no variant is shown within {fmt_margin(margin)} of F16 on every task at "
                f"α {alpha:g}; with {t['n']} items on {task} the narrowest margin they can show is "
                f"{_pts(t['mde'])} points, and {fmt_margin(margin)} needs about {need:,} items."
                if t["mde"] is not None and need else
                f"The data cannot decide: too few items on {task} to test equivalence.")
    return (f"Ship F16: no quantized variant is shown within {fmt_margin(margin)} of F16 on every task; "
            + _why_not(tested[-1], margin, max_kld) + ".")
