"""Gather a report's inputs from the store (runs, steps, variants, evals, run_evals, items) and the
compare document the pipeline saved at `<run_dir>/compare.json`: the report's reading side (the
store itself is `posttrain.store`)."""

from __future__ import annotations

import platform
from collections import defaultdict
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

from posttrain import __version__
from posttrain._ci import mean_interval
from posttrain._versions import package_version
from posttrain.compare import read_compare
from posttrain.contracts import ConvertOut, DetectOut, RunLayout, step_outputs
from posttrain.errors import PosttrainError
from posttrain.store import Store, loads
from posttrain.track import read_tracking


def run_dir(store: Store, run: dict[str, Any]) -> Path:
    return Path(run["run_dir"]) if run.get("run_dir") else store.path.parent / "runs" / run["id"]


def load_run(store: Store, run_id: str) -> dict[str, Any]:
    run = store.runs.get(run_id)
    if run is None:
        raise PosttrainError(f"no run {run_id!r} in {store.path}", remedy="`posttrain runs` lists the runs")
    return run


def _ship(path: Path) -> dict[str, Any]:
    """The ship document (ship's one reader), or {} when the run measured no ladder."""
    if not path.exists():  # most runs: no need to import ship's package (numpy, scipy) to say so
        return {}
    from posttrain.ship import read_ship

    return read_ship(path)


def _quality(manifest: Any, sha256: str) -> dict[str, Any]:
    """KL divergence and top-1 agreement against F16, from the variant's entry in the convert manifest
    (`posttrain.convert/1`: variants → quant → verification.vs_f16) the variants table keeps."""
    listed = manifest.get("variants") if isinstance(manifest, dict) else None
    entry = next((v for v in listed.values() if isinstance(v, dict) and v.get("sha256") == sha256), {}) \
        if isinstance(listed, dict) else {}
    vs_f16 = (entry.get("verification") or {}).get("vs_f16") if isinstance(entry.get("verification"), dict) else None
    if not isinstance(vs_f16, dict):
        return {}
    found = {key: float(vs_f16[name]) for key, name in (("kld_vs_f16", "mean_kld"), ("top1_vs_f16", "top1_agreement"))
             if isinstance(vs_f16.get(name), (int, float))}
    return found


def load_variants(store: Store, run: dict[str, Any]) -> list[dict[str, Any]]:
    if not run.get("checkpoint_sha256"):
        return []
    rows = store.variants.of_checkpoint(run["checkpoint_sha256"])
    return [{"quant": r["quant"], "path": r["path"], "sha256": r["sha256"], "size_bytes": r["size_bytes"],
             "toolchain": r["toolchain"], **_quality(loads(r["manifest_json"]), r["sha256"])} for r in rows]


def _interval(values: list[float]) -> tuple[float, tuple[float, float] | None]:
    """Mean and 95% CI, by the one method used everywhere (posttrain._ci)."""
    summary = mean_interval(values)
    ci = summary["ci"]
    return summary["mean"], (ci[0], ci[1]) if ci and None not in ci else None


def _from_aggregates(aggregates: Any, task: str) -> list[dict[str, Any]]:
    """lm-eval style aggregates {"acc,none": 0.41, "acc_stderr,none": 0.02, ...} when no items exist."""
    if not isinstance(aggregates, dict):
        return []
    inner = aggregates.get(task) if isinstance(aggregates.get(task), dict) else aggregates
    out = []
    for key, value in inner.items():
        if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
            continue
        metric, flt = key.split(",", 1)
        se = inner.get(f"{metric}_stderr,{flt}")
        ci = (value - 1.96 * se, value + 1.96 * se) if isinstance(se, (int, float)) else None
        out.append({"task": task, "metric": metric, "filter": flt, "value": float(value), "ci": ci, "n": None})
    return out


def load_evals(store: Store, run_id: str, variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One score per (label, task or group, filter, metric), computed from the items of every
    evaluation linked to the run, so a group (mmlu) spread over many leaf-task evaluations is one row
    with the same n and CI method as the compare document."""
    by_model = {v["sha256"]: v["quant"] for v in variants} | {v["path"]: v["quant"] for v in variants}
    rows = store.run_evals.evals(run_id)
    values: dict[tuple[str, str, str, str, str], list[float]] = defaultdict(list)
    meta: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for r in rows:
        common = {"label": r["label"], "role": r["role"], "quant": by_model.get(r["model_id"])}
        items = store.evals.scores(r["id"])
        if not items:
            out.extend({**common, "task_hash": r["task_hash"], "seconds": r["seconds"], **agg}
                       for agg in _from_aggregates(loads(r["aggregates_json"]), r["task"]))
            continue
        seen: set[tuple[str, str, str, str, str]] = set()
        for item in items:
            key = (r["role"], r["label"], item["t"], item["filter"], item["metric"])
            values[key].append(float(item["value"]))
            m = meta.setdefault(key, {**common, "hashes": set(), "seconds": 0.0})
            if key not in seen:  # count each evaluation's time and hash once per score
                seen.add(key)
                m["seconds"] += r["seconds"] or 0.0
                if r["task_hash"]:
                    m["hashes"].add(r["task_hash"])
    for key, vals in values.items():
        _, _, task, flt, metric = key
        m = meta[key]
        mean, ci = _interval(vals)
        hashes = sorted(m["hashes"])
        out.append({"label": m["label"], "role": m["role"], "quant": m["quant"], "task": task, "metric": metric,
                    "filter": flt, "value": mean, "ci": ci, "n": len(vals),
                    "task_hash": hashes[0] if len(hashes) == 1 else (",".join(hashes) or None),
                    "seconds": m["seconds"]})
    return out


def load_steps(store: Store, run_id: str) -> list[dict[str, Any]]:
    rows = store.steps.of_run(run_id)
    return [{"name": r["name"], "status": r["status"], "wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"],
             "error": r["error"], "attempts": r["attempts"]} for r in rows]


def environment(store: Store, run_id: str, variants: list[dict[str, Any]]) -> dict[str, Any]:
    env: dict[str, Any] = {
        "posttrain": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "llama-cpp-python": package_version("llama-cpp-python"),
        "lm-eval": package_version("lm-eval"),
    }
    toolchains = sorted({v["toolchain"] for v in variants if v.get("toolchain")})
    if toolchains:
        env["llama.cpp toolchain"] = "; ".join(toolchains)
    rows = store.run_evals.evals(run_id)
    harness = sorted({r["harness_version"] for r in rows if r["harness_version"]})
    if harness:
        env["lm-eval (evaluations)"] = ", ".join(harness)
    backends = sorted({r["backend"] for r in rows if r["backend"]})
    if backends:
        env["evaluation backend"] = ", ".join(backends)
    for r in rows:
        for k, v in (loads(r["env_json"]) or {}).items():
            env.setdefault(str(k), v)
    return {k: v for k, v in env.items() if v is not None}


def _detect_and_convert(store: Store, run_id: str) -> tuple[DetectOut | None, ConvertOut | None]:
    """What the detect and convert steps recorded, as their typed outputs (None where not done)."""
    outputs = {r["name"]: step_outputs(r["name"], r["outputs_json"]) for r in store.steps.of_run(run_id)
               if r["name"] in ("detect", "convert")}
    detect, convert = outputs.get("detect"), outputs.get("convert")
    return (detect if isinstance(detect, DetectOut) else None, convert if isinstance(convert, ConvertOut) else None)


def _reference(convert: ConvertOut | None) -> dict[str, Any] | None:
    """The reference the convert step chose, and why; None for a run made before the choice existed."""
    return asdict(convert.reference) if convert and convert.reference else None


def _adapter(detect: DetectOut | None, convert: ConvertOut | None, compare: dict[str, Any],
             variants: list[dict[str, Any]]) -> dict | None:
    """The LoRA section, from what the detect and convert steps recorded (None for full weights)."""
    from posttrain.report._adapter import adapter_section

    return adapter_section(detect.adapter if detect else None, convert.routes if convert else None,
                           list(compare.get("comparisons") or []),
                           {v["quant"]: v["size_bytes"] or 0 for v in variants})


def gather(store: Store, run_id: str, compare: dict[str, Any] | None = None,
           not_yet: Collection[str] = ()) -> tuple[dict[str, Any], Path]:
    """The keyword arguments for write_report, and the run's folder. `compare`: the run's compare
    document when the caller has it (the pipeline hands on what its compare step wrote); else it is
    read from the run's folder. `not_yet`: steps shown pending whatever the store holds for them."""
    run = load_run(store, run_id)
    folder = run_dir(store, run)
    variants = load_variants(store, run)
    steps = [s if s["name"] not in not_yet else
             {**s, "status": "pending", "wall_s": None, "peak_rss_bytes": None, "error": None, "attempts": 0}
             for s in load_steps(store, run_id)]
    inputs = {
        "compare": read_compare(RunLayout(folder).compare_json) if compare is None else compare,
        "run": {k: run[k] for k in ("id", "checkpoint", "model_name", "baseline", "created_at", "finished_at",
                                    "status")},
        "variants": variants,
        "evals": load_evals(store, run_id, variants),
        "steps": steps,
        "environment": environment(store, run_id, variants),
        "failures": [{"step": s["name"], "error": s["error"]} for s in steps if s["status"] == "failed"],
        "tracking": read_tracking(folder),
        "ship": _ship(RunLayout(folder).ship_json),
    }
    detect, convert = _detect_and_convert(store, run_id)
    inputs["adapter"] = _adapter(detect, convert, inputs["compare"], variants)
    inputs["reference"] = _reference(convert)
    return inputs, folder
