"""Shards' outputs back into the shape lm-eval's `simple_evaluate` returns for the whole selection.

Samples are put back in the order lm-eval logs them (per leaf: filter by filter, documents in
selection order), so the items come out as a local run stores them. Aggregates are recomputed
over all documents the way lm-eval computes them for mean metrics: a leaf's mean and the standard
error of that mean; a group's mean weighted by leaf size and the pooled standard error.
"""

from __future__ import annotations

from lm_eval.api.metrics import mean_stderr, pooled_sample_stderr


def _merge_samples(outputs: list[dict], docs: dict[str, list[int]]) -> dict[str, list[dict]]:
    merged: dict[str, list[dict]] = {}
    for leaf, ids in docs.items():
        position = {doc_id: i for i, doc_id in enumerate(ids)}
        rows = [s for out in outputs for s in out["samples"].get(leaf, [])]
        filters = list(dict.fromkeys(s["filter"] for s in rows))
        merged[leaf] = sorted(rows, key=lambda s: (filters.index(s["filter"]), position.get(s["doc_id"], 0)))
    return merged


def _leaf_metrics(rows: list[dict]) -> dict[tuple[str, str], list[float]]:
    values: dict[tuple[str, str], list[float]] = {}
    for s in rows:
        for metric in s.get("metrics", []):
            value = s.get(metric)
            if isinstance(value, int | float | bool):
                values.setdefault((metric, s["filter"]), []).append(float(value))
    return values


def _aggregate(values: list[float]) -> tuple[float, float | None]:
    return sum(values) / len(values), (mean_stderr(values) if len(values) > 1 else None)


def _results(name: str, samples: dict[str, list[dict]]) -> dict[str, dict]:
    results: dict[str, dict] = {}
    by_key: dict[tuple[str, str], list[tuple[float, float | None, int]]] = {}
    for leaf, rows in samples.items():
        entry: dict = {"alias": leaf}
        for (metric, filt), values in _leaf_metrics(rows).items():
            mean, se = _aggregate(values)
            entry[f"{metric},{filt}"], entry[f"{metric}_stderr,{filt}"] = mean, se if se is not None else "N/A"
            by_key.setdefault((metric, filt), []).append((mean, se, len(values)))
        results[leaf] = entry
    if name not in results:  # a group: its leaves weighted by size, as lm-eval's weight_by_size
        entry = {"alias": name}
        for (metric, filt), parts in by_key.items():
            sizes = [n for _, _, n in parts]
            entry[f"{metric},{filt}"] = sum(m * n for m, _, n in parts) / sum(sizes)
            stderrs = [se for _, se, _ in parts]
            entry[f"{metric}_stderr,{filt}"] = (pooled_sample_stderr(stderrs, sizes)
                                               if all(se is not None for se in stderrs) else "N/A")
        results[name] = entry
    return results


def merge_outputs(name: str, leaves: dict, docs: dict[str, list[int]], outputs: list[dict]) -> dict:
    samples = _merge_samples(outputs, docs)
    merged: dict = {"results": _results(name, samples), "samples": samples}
    for key in ("versions", "n-shot", "higher_is_better", "configs"):
        merged[key] = {k: v for out in outputs for k, v in (out.get(key) or {}).items()}
    merged["n-samples"] = {leaf: {"original": len(task.eval_docs), "effective": len({s["doc_id"] for s in samples.get(leaf, [])})}
                           for leaf, task in leaves.items()}
    merged["config"] = outputs[0].get("config") if outputs else {}
    return merged
