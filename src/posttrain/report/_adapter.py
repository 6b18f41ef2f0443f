"""The report's LoRA section: what the adapter is, which routes were built, and which one to ship.

Every candidate was compared with the base on the same items, so the gap between two routes on a
task is the difference of their paired differences (same items, same baseline). The advice: a merged
variant when it is never significantly worse than the base where the adapter route is not (one
file, quantizable, no adapter support needed at run time); the smallest such variant. Otherwise the
adapter route, which keeps the adapter's behaviour exactly.
"""

from __future__ import annotations

from typing import Any

from posttrain.contracts import AdapterFacts, AdapterRoutes

ROUTE_MARK = "+LoRA"  # every base + adapter evaluation (the 16-bit base, and the 4-bit base of a QLoRA)


def _worse(comparisons: list[dict[str, Any]], label: str) -> set[tuple[str, str, str]]:
    return {(c.get("task"), c.get("metric"), c.get("filter")) for c in comparisons
            if c.get("new_label") == label and c.get("verdict") == "worse"}


def adapter_section(facts: AdapterFacts | None, routes: AdapterRoutes | None,
                    comparisons: list[dict[str, Any]], variant_sizes: dict[str, int]) -> dict[str, Any] | None:
    """The view of the LoRA section (the detect and convert steps' records), or None when the run's
    checkpoint was full weights."""
    if facts is None:
        return None
    labels = sorted({c.get("new_label") for c in comparisons if isinstance(c.get("new_label"), str)})
    # The adapter route's own label ends in its base's type + LoRA (F16+LoRA, or BF16+LoRA).
    suffix = f"-{routes.adapter.label}" if routes and routes.adapter else None
    adapter_label = next((label for label in labels if suffix and label.endswith(suffix)), None)
    applied = [label for label in labels if label.endswith(ROUTE_MARK)]
    merged = [label for label in labels if label not in applied]
    notes = []
    if facts.qlora:
        notes.append("QLoRA: the adapter was trained against a 4-bit base; merged, it runs on the full-precision "
                     "base. The rows against the 4-bit base + adapter (Q4_K_M, near the training condition) "
                     "show what serving it merged changes.")
    if facts.route_note:
        notes.append(f"Only the merge route was built: {facts.route_note}.")
    gaps = []
    by_key = {(c.get("new_label"), c.get("task"), c.get("metric"), c.get("filter")): c for c in comparisons}
    for route in applied:
        for label in merged:
            for (lab, task, metric, flt), c in sorted(by_key.items(), key=lambda kv: tuple(map(str, kv[0]))):
                other = by_key.get((route, task, metric, flt))
                a, b = (c.get("diff") or {}).get("mean"), ((other or {}).get("diff") or {}).get("mean")
                if lab == label and isinstance(a, (int, float)) and isinstance(b, (int, float)):
                    gaps.append({"label": label, "route": route, "task": task, "metric": metric, "filter": flt,
                                 "gap": a - b})
    adapter_worse = _worse(comparisons, adapter_label) if adapter_label else set()
    fine = [label for label in merged if _worse(comparisons, label) <= adapter_worse]
    if fine:
        ship = min(fine, key=lambda label: variant_sizes.get(label.rsplit("-", 1)[-1], 0))
        why = ("no worse than the base wherever the adapter route is not: one file, quantizable, no adapter "
               "support needed where it runs")
    elif adapter_label:
        ship, why = adapter_label, "every merged variant loses to the base somewhere the adapter route does not"
    else:
        ship, why = None, "no evaluation to decide on"
    return {"base": facts.base, "base_ref": facts.base_ref, "peft_type": facts.peft_type,
            "rank": facts.rank, "lora_alpha": facts.lora_alpha, "qlora": facts.qlora,
            "routes": ["merge"] + (["adapter"] if routes and routes.adapter else []), "notes": notes,
            "gaps": gaps, "ship": ship, "ship_reason": why}
