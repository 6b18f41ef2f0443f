"""Pair two sets of per-item results, compute each comparison, correct for multiplicity (Holm), and
build the `posttrain.compare/1` document."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from statsmodels.stats.multitest import multipletests

from posttrain._numbers import fmt_p
from posttrain.compare._items import ItemResult
from posttrain.compare._stats import finite, paired_comparison
from posttrain.contracts import COMPARE_SCHEMA
from posttrain.errors import PosttrainError

SCHEMA = COMPARE_SCHEMA
VERDICTS = ("better", "worse", "no significant difference")
DISAGREEMENTS_PER_TASK = 50
# A leaf task pairs only when at least this share of the larger side's items find a partner; below
# it the two runs evaluated different subsets / task versions and a "difference" would be meaningless.
MIN_PAIRED_SHARE = 0.5
# Metrics where a smaller value is the better one (lm-eval's higher_is_better: false).
LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter"})
# Words for the cluster key when the caller names none.
DEFAULT_CLUSTER_KEYS = {"mmlu": "subject", "hellaswag": "activity_label"}
NO_CLUSTERS = frozenset({"", "none", "off"})

Key = tuple[str, str, str]  # (reported task, filter, metric)


@dataclass
class PairedSet:
    """Aligned items of one reported (task or group, filter, metric)."""

    task: str
    filter: str
    metric: str
    pairs: list[tuple[ItemResult, ItemResult]] = field(default_factory=list)
    leaf_tasks: set[str] = field(default_factory=set)
    n_only_new: int = 0
    n_only_baseline: int = 0


def _by_leaf(items: Sequence[ItemResult]) -> dict[tuple[str, str, str], list[ItemResult]]:
    out: dict[tuple[str, str, str], list[ItemResult]] = defaultdict(list)
    for it in items:
        out[(it.task, it.filter, it.metric)].append(it)
    return out


def _match_leaf(new: list[ItemResult], base: list[ItemResult]):
    """Match on doc_hash; identical documents (same hash twice) pair in doc_id order."""
    def index(items):
        idx: dict[tuple[str, int], ItemResult] = {}
        seen: dict[str, int] = defaultdict(int)
        for it in sorted(items, key=lambda i: (i.doc_hash, i.doc_id)):
            idx[(it.doc_hash, seen[it.doc_hash])] = it
            seen[it.doc_hash] += 1
        return idx

    ni, bi = index(new), index(base)
    common = sorted(ni.keys() & bi.keys(), key=lambda k: (ni[k].doc_id, k))
    return [(ni[k], bi[k]) for k in common], len(ni) - len(common), len(bi) - len(common)


def pair_items(new: Sequence[ItemResult], baseline: Sequence[ItemResult]) -> tuple[dict[Key, PairedSet], list[dict]]:
    """Pair on (task, doc_hash, filter, metric) and group by reported task (group or leaf task).

    Returns the paired sets and the (task, filter, metric) present on one side only. Raises
    PosttrainError when a leaf task present on both sides mostly fails to pair.
    """
    new_leaf, base_leaf = _by_leaf(new), _by_leaf(baseline)
    paired: dict[Key, PairedSet] = {}
    one_sided: dict[Key, dict] = {}
    for leaf in sorted(new_leaf.keys() | base_leaf.keys()):
        task, flt, metric = leaf
        n_items, b_items = new_leaf.get(leaf, []), base_leaf.get(leaf, [])
        group = next((i.group for i in (*b_items, *n_items) if i.group), None)
        key = (group or task, flt, metric)
        if not n_items or not b_items:
            entry = one_sided.setdefault(key, {"task": key[0], "filter": flt, "metric": metric,
                                               "n_only_new": 0, "n_only_baseline": 0})
            entry["n_only_new"] += len(n_items)
            entry["n_only_baseline"] += len(b_items)
            continue
        pairs, only_new, only_base = _match_leaf(n_items, b_items)
        larger = max(len(n_items), len(b_items))
        if len(pairs) < MIN_PAIRED_SHARE * larger:
            raise PosttrainError(
                f"cannot pair {task} ({metric}, filter {flt}): only {len(pairs)} items match on doc_hash "
                f"({len(n_items)} new, {len(b_items)} baseline; {only_new} only in new, {only_base} only in "
                "baseline), so the two sides evaluated different documents",
                remedy="evaluate both with the same task version, the same subset (--limit / samples) "
                       "and the same dataset files")
        ps = paired.setdefault(key, PairedSet(*key))
        ps.pairs.extend(pairs)
        ps.leaf_tasks.add(task)
        ps.n_only_new += only_new
        ps.n_only_baseline += only_base
    for key, entry in one_sided.items():
        if key in paired:  # some leaf tasks of a group ran on one side only: count them, still compare
            paired[key].n_only_new += entry["n_only_new"]
            paired[key].n_only_baseline += entry["n_only_baseline"]
    skipped = [dict(e, reason="only in " + ("new" if e["n_only_new"] else "baseline"))
               for k, e in sorted(one_sided.items()) if k not in paired]
    return paired, skipped


def _cluster_ids(ps: PairedSet, clusters: dict[str, str] | None) -> tuple[list[str] | None, str | None]:
    """One cluster id per pair, and the name of what the clusters are.

    The item's own `cluster` (MMLU subject, HellaSwag activity label, or the field the loader was
    told to use) comes first; in a group of several leaf tasks an item without one is clustered by
    its leaf task. `clusters[task] = "none"` switches clustering off for that task.
    """
    named = (clusters or {}).get(ps.task)
    if named is None:
        named = next((clusters[t] for t in sorted(ps.leaf_tasks) if clusters and t in clusters), None)
    if named is not None and named.strip().lower() in NO_CLUSTERS:
        return None, None
    ids: list[str] = []
    used_own = used_leaf = False
    for i, (a, b) in enumerate(ps.pairs):
        c = b.cluster if b.cluster is not None else a.cluster
        if c is not None:
            ids.append(f"{b.task}\x1f{c}")
            used_own = True
        elif len(ps.leaf_tasks) > 1:
            ids.append(b.task)
            used_leaf = True
        else:
            ids.append(f"\x1e{i}")  # alone in its cluster
    if not (used_own or used_leaf):
        return None, None
    key = named or (DEFAULT_CLUSTER_KEYS.get(ps.task, "cluster") if used_own else "task")
    return ids, key


def _task_words(c: dict) -> str:
    words = c["task"]
    if c["metric"] != "acc":
        words += f" {c['metric']}"
    if c["filter"] != "none":
        words += f" ({c['filter']})"
    return words


def _decimals(x: float) -> int:
    """One decimal for points; two below one point, so small losses do not read as 0.0."""
    return 1 if abs(x * 100) >= 1 or x == 0 else 2


def _num(x: float, unit_scale: float, signed: bool = False, decimals: int = 1) -> str:
    sign = "+" if signed else ""
    if unit_scale == 100:
        return f"{x * 100:{sign}.{decimals}f}"
    return f"{x:{sign}.3g}"


def _sentence(c: dict, alpha: float, unit_scale: float, unit: str) -> str:
    new, base, what = c["new_label"], c["baseline_label"], _task_words(c)
    d, p_adj = c["diff"], c["p_adjusted"]
    level = f"{100 * (1 - alpha):g}%"
    if d["mean"] is None or p_adj is None:
        return f"too few paired items (n = {c['n']}) to test a difference between {new} and {base} on {what}."
    ci = d["ci"]
    dec = _decimals(d["mean"])
    if c["verdict"] != "no significant difference":
        mean = d["mean"] if d["mean"] >= 0 else -d["mean"]
        verb = "gains" if d["mean"] > 0 else "loses"
        if c["metric"] in LOWER_IS_BETTER:  # a higher perplexity is a loss, not a gain
            verb = "is worse by" if c["verdict"] == "worse" else "is better by"
        if ci is not None:
            lo, hi = (ci[0], ci[1]) if d["mean"] > 0 else (-ci[1], -ci[0])
            ci_words = f" ({level} CI {_num(lo, unit_scale, decimals=dec)}–{_num(hi, unit_scale, decimals=dec)})"
        else:
            ci_words = ""
        amount = f"{_num(mean, unit_scale, decimals=dec)} {unit}".rstrip()
        return f"{new} {verb} {amount} on {what} vs {base}{ci_words}, significant after Holm."
    ci_words = (f", {level} CI {_num(ci[0], unit_scale, True, dec)} to {_num(ci[1], unit_scale, True, dec)}"
                if ci else "")
    mean_words = _num(d["mean"], unit_scale, True, dec)
    text = (f"no significant difference on {what} ({new} vs {base}: {f'{mean_words} {unit}'.rstrip()}{ci_words}, "
            f"Holm p = {fmt_p(p_adj)})")
    if c["mde_80"] is not None:
        text += f"; this n detects only ≥ {_num(c['mde_80'], unit_scale, decimals=_decimals(c['mde_80']))} {unit}".rstrip()
    return text + "."


def _disagreements(ps: PairedSet, new_label: str, base_label: str, per_comparison: int) -> list[dict]:
    rows = []
    for a, b in sorted(ps.pairs, key=lambda p: (p[1].task, p[1].doc_id)):
        if a.value == b.value:
            continue
        rows.append({"task": b.task, "group": b.group or a.group, "doc_id": b.doc_id, "doc_hash": b.doc_hash,
                     "filter": b.filter, "metric": b.metric, "question": b.question or a.question,
                     "target": b.target if b.target is not None else a.target,
                     "new_response": a.response, "baseline_response": b.response,
                     "new_value": finite(a.value), "baseline_value": finite(b.value),
                     "new_label": new_label, "baseline_label": base_label})
        if len(rows) >= per_comparison:
            break
    return rows


def compare_family(pairs: Sequence[tuple[str, Sequence[ItemResult], str, Sequence[ItemResult]]], *,
                   alpha: float = 0.05, clusters: dict[str, str] | None = None, seed: int = 0,
                   n_boot: int = 10000, sources: dict[str, str] | None = None) -> dict:
    """Several comparisons (e.g. F16, Q8_0 and Q4_K_M each against the baseline) in one document,
    Holm-corrected over every (pair, task, filter, metric) in it.

    `pairs`: (new_label, new_items, baseline_label, baseline_items) tuples. `clusters`: task or group
    → the name of the per-item cluster field (`"none"` turns clustering off for that task).
    `sources`: label → where the items came from, recorded in the document.
    """
    if not 0 < alpha < 1:
        raise PosttrainError(f"alpha must lie between 0 and 1, got {alpha}")
    if not pairs:
        raise PosttrainError("nothing to compare: no pairs given")
    sources = sources or {}
    comparisons: list[dict] = []
    disagreements: list[dict] = []
    skipped: list[dict] = []
    for new_label, new_items, base_label, base_items in pairs:
        if new_label == base_label:
            raise PosttrainError(f"both sides are labelled {new_label!r}", remedy="give the two sides distinct labels")
        for label, items in ((new_label, new_items), (base_label, base_items)):
            if not items:
                raise PosttrainError(f"{label} has no per-item results",
                                     remedy="run lm-eval with --log_samples, or evaluate with posttrain first")
        paired, one_sided = pair_items(new_items, base_items)
        skipped += [dict(s, new_label=new_label, baseline_label=base_label) for s in one_sided]
        if not paired:
            raise PosttrainError(
                f"{new_label} and {base_label} share no (task, filter, metric): "
                f"{sorted({i.task for i in new_items})} vs {sorted({i.task for i in base_items})}",
                remedy="evaluate both sides on the same tasks")
        per_task = defaultdict(list)
        for key in sorted(paired):
            per_task[key[0]].append(key)
        for task, keys in per_task.items():
            budget = max(1, DISAGREEMENTS_PER_TASK // len(keys))
            for key in keys:
                ps = paired[key]
                new_v = np.array([a.value for a, _ in ps.pairs], dtype=float)
                base_v = np.array([b.value for _, b in ps.pairs], dtype=float)
                if not (np.all(np.isfinite(new_v)) and np.all(np.isfinite(base_v))):
                    raise PosttrainError(f"{task} {key[2]} has non-finite per-item values (NaN or inf)",
                                         remedy="this metric is not a per-item mean; compare a mean metric")
                ids, cluster_key = _cluster_ids(ps, clusters)
                s = paired_comparison(new_v, base_v, np.array(ids, dtype=object) if ids else None,
                                      alpha=alpha, seed=seed, n_boot=n_boot)
                s["diff"]["cluster_key"] = cluster_key if s["diff"]["n_clusters"] else None
                proportion = bool(np.all((new_v >= 0) & (new_v <= 1) & (base_v >= 0) & (base_v <= 1)))
                comparisons.append({
                    "task": key[0], "metric": key[2], "filter": key[1],
                    "new_label": new_label, "baseline_label": base_label,
                    "n": s["n"], "n_only_new": ps.n_only_new, "n_only_baseline": ps.n_only_baseline,
                    "binary": s["binary"], "new": s["new"], "baseline": s["baseline"], "diff": s["diff"],
                    "test": s["test"], "test_naive": s["test_naive"], "bootstrap": s["bootstrap"],
                    "p_value": s["p_value"], "p_adjusted": None, "verdict": "no significant difference",
                    "mde_80": s["mde_80"], "sentence": "",
                    "_unit": (100.0, "points") if proportion else (1.0, ""),
                })
                disagreements += _disagreements(ps, new_label, base_label, budget)

    tested = [i for i, c in enumerate(comparisons) if c["p_value"] is not None]
    if tested:
        reject, p_adj, _, _ = multipletests([comparisons[i]["p_value"] for i in tested], alpha=alpha, method="holm")
        for i, r, p in zip(tested, reject, p_adj, strict=True):
            c = comparisons[i]
            c["p_adjusted"] = finite(min(1.0, p))
            mean = c["diff"]["mean"] or 0.0
            if r and mean != 0:
                better = mean > 0 if c["metric"] not in LOWER_IS_BETTER else mean < 0
                c["verdict"] = "better" if better else "worse"
    for c in comparisons:
        scale, unit = c.pop("_unit")
        c["sentence"] = _sentence(c, alpha, scale, unit)

    first_new, _, first_base, _ = pairs[0]
    new_labels = list(dict.fromkeys(p[0] for p in pairs))
    base_labels = list(dict.fromkeys(p[2] for p in pairs))
    return {
        "schema": SCHEMA,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "alpha": alpha,
        "correction": "holm",
        "new": {"label": first_new if len(new_labels) == 1 else ", ".join(new_labels),
                "source": sources.get(first_new) if len(new_labels) == 1 else None},
        "baseline": {"label": first_base if len(base_labels) == 1 else ", ".join(base_labels),
                     "source": sources.get(first_base) if len(base_labels) == 1 else None},
        "pairs": [{"new": p[0], "baseline": p[2]} for p in pairs],
        "comparisons": comparisons,
        "skipped": skipped,
        "disagreements": disagreements,
    }


def compare_items(new: Sequence[ItemResult], baseline: Sequence[ItemResult], *, new_label: str,
                  baseline_label: str, alpha: float = 0.05, clusters: dict[str, str] | None = None,
                  seed: int = 0, n_boot: int = 10000, new_source: str | None = None,
                  baseline_source: str | None = None) -> dict:
    """Compare one model's per-item results with a baseline's: the `posttrain.compare/1` document,
    Holm-corrected across all (task, filter, metric) comparisons in it."""
    sources = {k: v for k, v in ((new_label, new_source), (baseline_label, baseline_source)) if v is not None}
    return compare_family([(new_label, list(new), baseline_label, list(baseline))], alpha=alpha,
                          clusters=clusters, seed=seed, n_boot=n_boot, sources=sources)


