"""The verdict's one sentence: the pick, its strength (shown, indicated, none) and the reason.

It is the first line a user reads (ship.md, ship.html, the terminal, ship.json's verdict), so it names
the pick and the strength of the evidence before anything else:
  "Ship Q5_K_M (…), shown: …", "Ship Q4_K_M (…), indicated, not shown: …",
  "Ship F16, no quantized variant shown or indicated within 1 point: …".
"""

from __future__ import annotations

from posttrain.checkpoint import human_bytes


def _pts(x: float) -> str:
    return f"{abs(x) * 100:.1f}"


def fmt_margin(margin: float) -> str:
    pts = margin * 100
    return f"{pts:g} point" + ("" if pts == 1 else "s")


def _names(variants: list[dict]) -> str:
    names = [v["quant"] for v in variants]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _describe(v: dict) -> str:
    parts = []
    if v["bits_per_weight"]:
        parts.append(f"{v['bits_per_weight']:.1f} bits/weight")
    parts.append(human_bytes(v["size_bytes"]))
    if v["tg_tok_s"]:
        # A figure measured beside other work is lower than the machine gives: say so where it is quoted.
        parts.append(f"{v['tg_tok_s']:.0f} tok/s" + (" on a busy machine" if v.get("speed_busy") else ""))
    return ", ".join(parts)


def _why_not(v: dict, margin: float, max_kld: float | None) -> str:
    """Why a variant was not picked, in a clause."""
    if v["status"] == "kld above bound":
        return f"{v['quant']} is equivalent on the tasks but its mean KLD {v['kld_mean']:.3f} exceeds {max_kld:g}"
    # The task that rules it out: one shown worse first, then the largest loss.
    worst_task, worst = min(v["tasks"].items(), key=lambda kv: (not kv[1]["shown_worse"], kv[1]["equivalent_holm"],
                                                                kv[1]["mean"] or 0))
    if worst["mean"] is None or worst["ci95"] is None:
        return f"{v['quant']} has too few items on {worst_task} to test"
    lo, hi = worst["ci95"] or (0.0, 0.0)
    verb = "loses" if worst["mean"] < 0 else "gains"
    ci = f"{_pts(hi)}–{_pts(lo)}" if worst["mean"] < 0 else f"{_pts(lo)}–{_pts(hi)}"
    if lo < 0 < hi:
        ci = f"{lo * 100:+.1f} to {hi * 100:+.1f}"
    tail = "" if worst["shown_worse"] else f", not shown within {fmt_margin(margin)}"
    return f"{v['quant']} {verb} {_pts(worst['mean'])} points on {worst_task} (95% CI {ci}){tail}"


def _bound_source(bound: float, margin: float) -> str:
    from posttrain.ship._indicated import KLD_BOUND_AT_1_POINT

    if bound == KLD_BOUND_AT_1_POINT:
        return "llama.cpp's Q4_K_M on Llama-3-8B"
    if abs(bound - KLD_BOUND_AT_1_POINT * min(1.0, margin / 0.01)) < 1e-12:
        return f"llama.cpp's Q4_K_M on Llama-3-8B, scaled to {fmt_margin(margin)}"
    return "the bound asked for"


def _items_clause(n: int | None, task: str | None, mde: float | None, need: int | None, margin: float) -> str:
    if task is None:
        return ""
    if not n or mde is None or not need:
        return f"too few items on {task} to test equivalence"
    return (f"{n:,} items on {task} can show {_pts(mde)} points at best, "
            f"{fmt_margin(margin)} needs about {need:,} items")


def _shown(pick: dict, tested: list[dict], margin: float, alpha: float, max_kld: float | None) -> str:
    smaller = [v for v in tested if v["size_bytes"] < pick["size_bytes"]]
    text = (f"Ship {pick['quant']} ({_describe(pick)}), shown: it loses no more than {fmt_margin(margin)} against "
            f"F16 on every task (equivalence at α {alpha:g}, Holm over tasks × variants)")
    if smaller:
        text += "; " + _why_not(smaller[-1], margin, max_kld)
    return text + "."


def _indicated(pick: dict, ind, margin: float, bound: float) -> str:
    items = _items_clause(ind.n, ind.task, ind.mde, ind.items_to_show, margin)
    return (f"Ship {pick['quant']} ({_describe(pick)}), indicated, not shown: its mean KLD against F16 is "
            f"{ind.kld_mean:.4f}, at most {ind.kld_upper95:.4f} (95%), under the {bound:.3g} of "
            f"{_bound_source(bound, margin)}, and no task shows it more than {fmt_margin(margin)} worse"
            + (f"; the tasks cannot show it: {items}" if items else "") + ".")


def _none(tested: list[dict], margin: float, alpha: float, max_kld: float | None, bound: float) -> str:
    clauses = []
    worse = [v for v in tested if any(t["shown_worse"] for t in v["tasks"].values())]
    if worse:
        why = _why_not(worse[-1], margin, max_kld)  # the largest of them: the one closest to usable
        clauses.append(f"{why}, shown worse" if len(worse) == 1 else f"{_names(worse)} are shown worse; {why}")
    rest = [v for v in tested if v not in worse]
    undecided = [v for v in rest if v["status"] == "undecided"]
    if undecided:
        _, task, t = max(((v, task, t) for v in undecided for task, t in v["tasks"].items() if t["undecided"]),
                         key=lambda x: x[2]["items_needed"] or 0)
        text = (f"the tasks cannot decide {_names(undecided)} at α {alpha:g} ("
                + _items_clause(t["n"], task, t["mde"], t["items_needed"], margin) + ")")
        uppers = [v for v in undecided if v["kld_upper95"] is not None]
        if not uppers:
            text += " and no KLD on held-out text was measured to indicate one"
        else:
            best = min(uppers, key=lambda v: v["kld_upper95"])
            if best["kld_upper95"] > bound:
                text += (f" and no mean KLD is shown under {bound:.3g} ({best['quant']}: at most "
                         f"{best['kld_upper95']:.4f})")
            else:  # its KLD would indicate it, but one of its tasks could decide and did not show it
                text += "; " + _why_not(best, margin, max_kld)
        clauses.append(text)
    elif rest:
        clauses.append(_why_not(rest[-1], margin, max_kld))
    return f"Ship F16, no quantized variant shown or indicated within {fmt_margin(margin)}: " + "; ".join(clauses) + "."


def sentence(variants: list[dict], pick: dict | None, strength: str, indication, margin: float, alpha: float,
             max_kld: float | None, bound: float) -> str:
    tested = [v for v in variants if v["tasks"]]
    if not tested:
        return "No task results to decide on: run the ladder with --tasks."
    if strength == "shown":
        return _shown(pick, tested, margin, alpha, max_kld)
    if strength == "indicated":
        return _indicated(pick, indication, margin, bound)
    return _none(tested, margin, alpha, max_kld, bound)
