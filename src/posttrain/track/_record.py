"""A finished run's record for the trackers, read from what the run left: its report.json (scores with
CIs, comparisons, variants, step times, toolchain), its settings and evaluations in the store, and
convert's manifest.

Everything a tracker stores is named here once, so MLflow and W&B show the same keys:
`score/<label>/<task>/<metric>[/<filter>]` (+ `/ci_low`, `/ci_high`), `compare/<label>/<task>/<metric>
[/<filter>]/{diff,diff_ci_low,diff_ci_high,p,p_adjusted}`, `variant/<quant>/{size_bytes,kld_vs_f16,
top1_vs_f16,eval_tokens_per_s}`, `step/<name>/{wall_s,peak_rss_bytes}`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from posttrain._files import read_json_file
from posttrain.contracts import RunLayout, step_outputs
from posttrain.store import Store, loads
from posttrain.track._base import ParentRun, TrackRecord

# What trackers accept in a key (MLflow's rule, which W&B also takes; no spaces, for readable keys):
# any run of other characters becomes one "_".
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-.:]+")
_MAX_PARAM = 500  # MLflow takes 6000 characters; a param is a label, not a document
_MAX_TAG = 5000


def key(*parts: Any) -> str:
    segments = []
    for part in parts:
        if part is None or part == "":
            continue
        text = _UNSAFE_KEY.sub("_", str(part)).strip("_")
        segments.append("_" if text in ("", ".", "..") else text)
    return "/".join(segments)


def _filter(name: Any) -> Any:
    return None if name in (None, "none") else name  # lm-eval's "no filter" adds nothing to a key


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _put(metrics: dict[str, float], name: str, value: Any) -> None:
    value = _finite(value)
    if value is not None:
        metrics[name] = value


def _pair(ci: Any) -> tuple[Any, Any]:
    return (ci[0], ci[1]) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)


def _metrics(report: dict[str, Any], speeds: dict[str, float], steps: list[dict[str, Any]]) -> dict[str, float]:
    m: dict[str, float] = {}
    for e in report.get("evals") or []:
        base = key("score", e.get("label"), e.get("task"), e.get("metric"), _filter(e.get("filter")))
        lo, hi = _pair(e.get("ci"))
        _put(m, base, e.get("value"))
        _put(m, f"{base}/ci_low", lo)
        _put(m, f"{base}/ci_high", hi)
    for c in (report.get("compare") or {}).get("comparisons") or []:
        base = key("compare", c.get("new_label"), c.get("task"), c.get("metric"), _filter(c.get("filter")))
        diff = c.get("diff") or {}
        lo, hi = _pair(diff.get("ci"))
        _put(m, f"{base}/diff", diff.get("mean"))
        _put(m, f"{base}/diff_ci_low", lo)
        _put(m, f"{base}/diff_ci_high", hi)
        _put(m, f"{base}/p", (c.get("test") or {}).get("p_value"))
        _put(m, f"{base}/p_adjusted", c.get("p_adjusted"))
    for v in report.get("variants") or []:
        base = key("variant", v.get("quant"))
        for name in ("size_bytes", "kld_vs_f16", "top1_vs_f16"):
            _put(m, f"{base}/{name}", v.get(name))
        _put(m, f"{base}/eval_tokens_per_s", speeds.get(v.get("quant") or ""))
    for s in steps:  # the runner's rows: the report's own step is timed there, not in report.json
        base = key("step", s.get("name"))
        _put(m, f"{base}/wall_s", s.get("wall_s"))
        _put(m, f"{base}/peak_rss_bytes", s.get("peak_rss_bytes"))
    return m


def _evaluation_settings(store: Store, run: dict[str, Any]) -> tuple[list[Any], list[str], dict[str, float]]:
    """n-shot values, selections, and the evaluation speed (tokens / s) of each candidate variant."""
    made = store.variants.of_checkpoint(run["checkpoint_sha256"]) if run.get("checkpoint_sha256") else []
    quant_of = {v["path"]: v["quant"] for v in made}
    rows = [{**r, "quant": quant_of.get(r["model_id"])} for r in store.run_evals.evals(run["id"])]
    shots = sorted({r["n_shot"] for r in rows if r["n_shot"] is not None})
    selections = sorted({r["selection_json"] for r in rows if r["selection_json"] not in (None, "", "{}")})
    totals: dict[str, list[float]] = {}
    for r in rows:
        if r["role"] == "candidate" and r["quant"] and r["tokens"] and r["seconds"]:
            t = totals.setdefault(r["quant"], [0.0, 0.0])
            t[0] += r["tokens"]
            t[1] += r["seconds"]
    return shots, selections, {q: tok / sec for q, (tok, sec) in totals.items() if sec > 0}


def _params(run: dict[str, Any], report: dict[str, Any], manifest: dict[str, Any] | None,
            shots: list[Any], selections: list[str]) -> dict[str, str]:
    try:
        settings = json.loads(run.get("config_json") or "{}")
    except ValueError:
        settings = {}
    p: dict[str, Any] = {
        "checkpoint": run.get("checkpoint"), "checkpoint_sha256": run.get("checkpoint_sha256"),
        "model_name": run.get("model_name"), "baseline": run.get("baseline") or "none",
        "quants": ",".join(settings.get("quants") or []), "tasks": ",".join(settings.get("tasks") or []),
        "limit": settings.get("limit"), "per_subject": settings.get("per_subject"), "seed": settings.get("seed"),
        "data_dir": settings.get("data_dir"), "n_shot": ",".join(map(str, shots)) or None,
        "selection": ";".join(selections) or None,
    }
    for name, value in ((manifest or {}).get("toolchain") or {}).items():
        p[key("toolchain", name)] = value
    for name, value in (report.get("environment") or {}).items():
        if name != "platform":  # changes with every kernel update; not what made the numbers
            p[key("version", name)] = value
    return {k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))[:_MAX_PARAM]
            for k, v in p.items() if v is not None and v != ""}


def _ship_pick(report: dict[str, Any]) -> str | None:
    """The "which quant to ship" pick, when the report has one (`ship.pick`)."""
    ship = report.get("ship")
    pick = ship.get("pick") if isinstance(ship, dict) else None
    return str(pick) if pick else None


def build_record(store: Store, run: dict[str, Any], steps: list[dict[str, Any]], *, outcome: str,
                 artifacts: list[str] | tuple[str, ...] = (), parent: ParentRun | None = None) -> TrackRecord:
    """The record of run `run` (its `runs` row) from its files and `steps` (the runner's step rows).
    `artifacts`: opt-in kinds on top of the documents ("gguf")."""
    layout = RunLayout(Path(run["run_dir"]))
    report = read_json_file(layout.report_json) or {}
    convert_row = next((s for s in steps if s.get("name") == "convert" and s.get("status") == "done"), None)
    convert = step_outputs("convert", convert_row.get("outputs_json")) if convert_row else None
    manifest_path = convert.manifest if convert else None
    # convert's manifest as the convert step stored it with each variant (the file itself is sent as is).
    rows = store.variants.of_checkpoint(run["checkpoint_sha256"]) if run.get("checkpoint_sha256") else []
    manifest = next((loads(r["manifest_json"]) for r in rows if r.get("manifest_json")), None)
    shots, selections, speeds = _evaluation_settings(store, run)

    summary = report.get("summary") or {}
    tags = {"posttrain.run_id": run["id"], "posttrain.status": outcome,
            "posttrain.verdict": summary.get("status") or ("failed" if outcome == "failed" else "no comparison"),
            "posttrain.headline": summary.get("headline"), "posttrain.model": run.get("model_name"),
            "posttrain.ship": _ship_pick(report)}
    files = [layout.report_html, layout.report_md, layout.report_json, layout.compare_json, manifest_path]
    models = [v.path for v in convert.variants] if convert and "gguf" in artifacts else []
    return TrackRecord(
        run_id=run["id"], name=run.get("model_name") or run["id"], status=outcome,
        params=_params(run, report, manifest, shots, selections),
        metrics=_metrics(report, speeds, steps),
        tags={k: str(v)[:_MAX_TAG] for k, v in tags.items() if v},
        artifacts=[f for f in files if f is not None and f.is_file()],
        models=[m for m in models if m.is_file()],
        report_html=layout.report_html if layout.report_html.is_file() else None,
        parent=parent)
