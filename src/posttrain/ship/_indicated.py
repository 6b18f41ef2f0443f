"""The *indicated* pick: when the tasks cannot decide, the held-out text can.

TOST on the tasks shows a variant within the margin only with many items: 200 HellaSwag items show
about 6 points, 1 point needs ~7,700. The held-out text is far more precise (thousands of scored
tokens put a mean KLD within a few percent), so when no variant is *shown* equivalent, the smallest
variant is *indicated* when
  - the tasks cannot decide it: on every task it is shown equivalent or undecided (the items at hand
    could not have shown the margin), and no task's 95% CI lies wholly outside ±margin (no task shows
    it worse, or better, by more than the margin);
  - the 95% upper bound of its mean KLD (mean + 1.96 SE, the SE over scored tokens that llama.cpp
    prints) is at most `kld_bound(margin)`.

The bound. llama.cpp's published mean KLD against F16, Llama-3-8B on wikitext without an importance
matrix: Q8_0 0.0014, Q6_K 0.0055, Q4_K_M 0.031. The Q4_K_M level is measured to cost a few tenths of
a point on task suites (Qwen3-8B Q4_K_M: ~0.2 points on a 10-task average, 0.3–0.5 on MMLU), half the
default 1-point margin or less, and it is the upper bound, not the mean, that has to clear it: 0.031
nats for a 1-point margin. Task loss and KLD both grow about as the square of the rounding step, so a
narrower margin scales the bound down in proportion (0.5 point: 0.0155); a wider one does not loosen
it, beyond what the published figures support.

What it is worth: `INDICATED_RATE`, the share of indicated picks truly within the margin on every task
in a simulated world described in docs/ship.md and checked by tests/test_ship_indicated.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# llama.cpp's KLD tables, Llama-3-8B, wikitext, no imatrix (nats)
PUBLISHED_KLD = {"Q8_0": 0.0014, "Q6_K": 0.0055, "Q4_K_M": 0.031}
KLD_BOUND_AT_1_POINT = PUBLISHED_KLD["Q4_K_M"]
# Share of indicated picks within the margin on every task, in the simulation (documented and tested).
INDICATED_RATE = 0.90
Z95 = 1.959964  # one-sided 97.5%: the upper end of the two-sided 95% interval


def kld_bound(margin: float) -> float:
    """The mean-KLD bound (nats) for an equivalence margin in metric units (0.01 = 1 point)."""
    return KLD_BOUND_AT_1_POINT * min(1.0, margin / 0.01)


def kld_upper95(mean: float | None, se: float | None) -> float | None:
    if mean is None or se is None:
        return None
    return mean + Z95 * se


@dataclass(frozen=True)
class Indication:
    """Why a variant is indicated, and what would turn it into *shown*."""

    quant: str
    kld_mean: float
    kld_upper95: float
    kld_bound: float
    # The undecided task that needs the most items to show equivalence (80% power at a true difference
    # of 0, the observed spread), with the items it has and the narrowest margin those can show.
    task: str | None
    n: int | None
    items_to_show: int | None
    mde: float | None

    def to_json(self) -> dict:
        return asdict(self)


def _tasks_cannot_decide(tasks: dict[str, dict], margin: float) -> bool:
    for t in tasks.values():
        if not (t["equivalent_holm"] or t["undecided"]):
            return False
        lo, hi = t["ci95"] or (None, None)
        if lo is not None and (hi < -margin or lo > margin):
            return False
    return True


def indicate(variants: list[dict], margin: float, bound: float) -> Indication | None:
    """The smallest variant (`variants` come smallest first) the held-out text indicates, or None."""
    for v in variants:
        upper = kld_upper95(v.get("kld_mean"), v.get("kld_se"))
        if not v["tasks"] or upper is None or upper > bound or not v["kld_ok"]:
            continue
        if not _tasks_cannot_decide(v["tasks"], margin):
            continue
        open_tasks = [(task, t) for task, t in v["tasks"].items() if not t["equivalent_holm"]]
        task, t = max(open_tasks, key=lambda kv: kv[1]["items_needed"] or 0) if open_tasks else (None, {})
        return Indication(v["quant"], v["kld_mean"], upper, bound, task, t.get("n"), t.get("items_needed"),
                          t.get("mde"))
    return None
