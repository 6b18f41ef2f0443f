"""Turn validated report inputs into the three report files (HTML, Markdown, JSON)."""

from __future__ import annotations

import json
import platform
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from posttrain import __version__
from posttrain._files import human_bytes, write_texts_atomic
from posttrain._markdown import md_escape
from posttrain._numbers import fmt_p
from posttrain._plotting import LOCK as PLOT_LOCK
from posttrain.report import _plots
from posttrain.report._model import (
    REPORT_SCHEMA,
    EvalInfo,
    ReportInput,
    finite,
    strip_thinking,
)

MAX_DISAGREEMENTS = 1000  # per report; the full list stays in report.json (the embedded compare)

_TEMPLATES = jinja2.PackageLoader("posttrain.report", "templates")


def _env(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=_TEMPLATES, autoescape=autoescape, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(num=fmt_num, signed=fmt_signed, ci=fmt_ci, bytes=fmt_bytes, md=md_escape,
                       secs=fmt_secs, pvalue=fmt_p)
    env.globals["zip"] = zip
    return env


# --- formatting (shared by both templates, so Markdown and HTML show the same digits) -------------


def fmt_num(x: Any, digits: int = 4) -> str:
    x = finite(x)
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_signed(x: Any, digits: int = 4) -> str:
    x = finite(x)
    return "—" if x is None else f"{x:+.{digits}f}"


def fmt_ci(ci: Any, digits: int = 4) -> str:
    if not ci or len(ci) != 2 or finite(ci[0]) is None or finite(ci[1]) is None:
        return "—"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def fmt_bytes(n: Any) -> str:
    return "—" if n is None else human_bytes(float(n))


def fmt_secs(x: Any) -> str:
    x = finite(x)
    if x is None:
        return "—"
    return f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min"


# --- the view the templates render ----------------------------------------------------------------


def _key(task: str, metric: str, flt: str) -> tuple[str, str, str]:
    return (task, metric, flt or "none")


def _quant_of(e: EvalInfo, quants: list[str]) -> str | None:
    if e.quant:
        return e.quant
    label = e.label.lower()
    # Longest first so "q4_k_m" wins over "q4_k" when both exist.
    for q in sorted(quants, key=len, reverse=True):
        if label == q.lower() or label.endswith(("-" + q.lower(), "_" + q.lower(), "." + q.lower())):
            return q
    return None


def build_view(data: ReportInput) -> dict[str, Any]:
    compare = data.compare
    comparisons = list(compare.get("comparisons") or [])
    new_label = (compare.get("new") or {}).get("label")
    base_label = (compare.get("baseline") or {}).get("label")

    verdicts = []
    for c in comparisons:
        diff = c.get("diff") or {}
        verdicts.append({
            "task": c.get("task"), "metric": c.get("metric"), "filter": c.get("filter") or "none",
            "verdict": c.get("verdict") or "no significant difference", "sentence": c.get("sentence") or "",
            "new_label": c.get("new_label") or new_label, "baseline_label": c.get("baseline_label") or base_label,
            "n": c.get("n"), "diff": finite(diff.get("mean")), "diff_ci": diff.get("ci"),
            "p": finite((c.get("test") or {}).get("p_value")), "p_adjusted": finite(c.get("p_adjusted")),
            "test": (c.get("test") or {}).get("name"), "mde_80": finite(c.get("mde_80")),
        })

    multi_new = len({v["new_label"] for v in verdicts}) > 1
    counts = defaultdict(int)
    for v in verdicts:
        counts[v["verdict"]] += 1
    failures = [f.model_dump() for f in data.failures]
    if failures:
        headline = f"Run failed at stage {failures[0]['step']}."
        status = "failed"
    elif not verdicts:
        headline = "No comparison was made."
        status = data.run.status or "unknown"
    else:
        parts = [f"{counts[k]} {k}" for k in ("better", "worse", "no significant difference") if counts[k]]
        headline = f"{new_label} vs {base_label}: " + ", ".join(parts) + f" (of {len(verdicts)} comparisons)."
        status = "worse" if counts["worse"] else "better" if counts["better"] else "no significant difference"

    # Score tables: one per (task, metric, filter), each variant then the baseline.
    variants = sorted(data.variants, key=lambda v: -(v.size_bytes or 0))
    quants = [v.quant for v in variants]
    tables: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for e in data.evals:
        row = {"label": e.label, "role": e.role or ("baseline" if e.label == base_label else "candidate"),
               "value": finite(e.value), "ci": e.ci, "n": e.n, "quant": _quant_of(e, quants)}
        tables.setdefault(_key(e.task, e.metric, e.filter), []).append(row)
    for c in comparisons:
        rows = tables.setdefault(_key(c["task"], c["metric"], c.get("filter") or "none"), [])
        for side, label, role in (("new", c.get("new_label") or new_label, "candidate"),
                                  ("baseline", c.get("baseline_label") or base_label, "baseline")):
            if not any(r["label"] == label for r in rows):
                stats = c.get(side) or {}
                rows.append({"label": label, "role": role, "value": finite(stats.get("mean")),
                             "ci": stats.get("ci"), "n": c.get("n"), "quant": None})
    order = {q: i for i, q in enumerate(quants)}
    compare_order = {_key(c["task"], c["metric"], c.get("filter") or "none"): i for i, c in enumerate(comparisons)}
    task_tables = [
        {"task": k[0], "metric": k[1], "filter": k[2],
         "rows": sorted(rows, key=lambda r: (r["role"] == "baseline", order.get(r["quant"], len(order)), r["label"]))}
        for k, rows in sorted(tables.items(), key=lambda kv: (compare_order.get(kv[0], len(compare_order)), kv[0]))
    ]

    # Quantization: per variant, its candidate scores per task (first metric seen for the task).
    score_tasks: list[str] = []
    quant_bars = []
    for v in variants:
        scores: dict[str, tuple[float, float | None, float | None]] = {}
        for t in task_tables:
            name = t["task"] if t["filter"] == "none" else f"{t['task']} ({t['filter']})"
            for r in t["rows"]:
                if r["quant"] == v.quant and r["role"] != "baseline" and r["value"] is not None:
                    ci = r["ci"] or (None, None)
                    scores.setdefault(f"{name} {t['metric']}", (r["value"], ci[0], ci[1]))
        for name in scores:
            if name not in score_tasks:
                score_tasks.append(name)
        quant_bars.append(_plots.QuantBar(v.quant, v.size_bytes, finite(v.kld_vs_f16), scores))

    forest_rows = [
        _plots.ForestRow(
            label=(f"{v['new_label']}: " if multi_new else "") + f"{v['task']} · {v['metric']}"
            + ("" if v["filter"] == "none" else f" ({v['filter']})"),
            mean=v["diff"], lo=finite((v["diff_ci"] or [None, None])[0]), hi=finite((v["diff_ci"] or [None, None])[1]),
            verdict=v["verdict"])
        for v in verdicts if v["diff"] is not None
    ]
    steps = [s.model_dump() for s in data.steps]

    disagreements = []
    for d in (compare.get("disagreements") or [])[:MAX_DISAGREEMENTS]:
        new_resp, new_think = strip_thinking(d.get("new_response"))
        base_resp, base_think = strip_thinking(d.get("baseline_response"))
        disagreements.append({
            "task": d.get("task"), "group": d.get("group"), "doc_id": d.get("doc_id"),
            "metric": d.get("metric"), "filter": d.get("filter") or "none",
            "question": strip_thinking(d.get("question"))[0], "target": d.get("target"),
            "new_response": new_resp, "baseline_response": base_resp,
            "new_value": finite(d.get("new_value")), "baseline_value": finite(d.get("baseline_value")),
            "new_label": d.get("new_label") or new_label, "baseline_label": d.get("baseline_label") or base_label,
            "new_think_sha256": d.get("new_think_sha256") or new_think,
            "baseline_think_sha256": d.get("baseline_think_sha256") or base_think,
        })
    n_disagreements = len(compare.get("disagreements") or [])

    task_hashes = sorted({(e.task, e.task_hash) for e in data.evals if e.task_hash})
    environment = {str(k): (v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))
                   for k, v in sorted(data.environment.items())}

    return {
        "run": data.run.model_dump(),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "posttrain_version": __version__,
        "headline": headline, "status": status, "counts": dict(counts),
        "new_label": new_label, "baseline_label": base_label, "multi_new": multi_new,
        "alpha": compare.get("alpha"), "correction": compare.get("correction"),
        "verdicts": verdicts, "task_tables": task_tables,
        "variants": [v.model_dump() for v in variants], "quant_tasks": score_tasks, "quant_bars": quant_bars,
        "steps": steps, "failures": failures, "environment": environment, "task_hashes": task_hashes,
        "disagreements": disagreements, "n_disagreements": n_disagreements,
        "forest_rows": forest_rows, "tracking": [t.model_dump() for t in data.tracking], "adapter": data.adapter,
        "ship": _ship_view(data.ship), "reference": data.reference.model_dump() if data.reference else None,
    }


def _ship_view(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The "Which quant to ship" section, rendered by the ship package from its own document."""
    if not doc:
        return None
    from posttrain.ship import notes, table

    head, rows = table(doc)
    return {"sentence": doc["verdict"]["sentence"], "head": head, "rows": rows, "notes": notes(doc), "doc": doc}


def render_html(view: dict[str, Any]) -> str:
    with PLOT_LOCK:
        plots = {
            "forest": _plots.forest_plot(view["forest_rows"]),
            "quant": _plots.quant_chart(view["quant_bars"], view["quant_tasks"]),
            "timings": _plots.timings_chart([(s["name"], s["wall_s"], s["status"]) for s in view["steps"]]),
        }
    if view["ship"]:
        from posttrain.ship import plot as ship_plot

        plots["ship"] = ship_plot(view["ship"]["doc"])
    # The SVGs were parsed and re-serialised by posttrain._plotting.sanitise_svg; only they bypass autoescaping.
    plots = {k: (Markup(v) if v else None) for k, v in plots.items()}
    return _env(autoescape=True).get_template("report.html.j2").render(**view, plots=plots)


def render_markdown(view: dict[str, Any]) -> str:
    return _env(autoescape=False).get_template("report.md.j2").render(**view)


def render_json(data: ReportInput, view: dict[str, Any]) -> str:
    doc = {
        "schema": REPORT_SCHEMA,
        "created_at": view["generated_at"],
        "generator": {"posttrain": __version__, "python": platform.python_version()},
        "run": data.run.model_dump(mode="json"),
        "summary": {"status": view["status"], "headline": view["headline"], "counts": view["counts"]},
        "variants": [v.model_dump(mode="json") for v in data.variants],
        "evals": [e.model_dump(mode="json") for e in data.evals],
        "steps": [s.model_dump(mode="json") for s in data.steps],
        "environment": data.environment,
        "failures": [f.model_dump(mode="json") for f in data.failures],
        "tracking": [t.model_dump(mode="json") for t in data.tracking],
        "compare": data.compare,
        "adapter": data.adapter,
        "reference": data.reference.model_dump(mode="json") if data.reference else None,
        **({"ship": data.ship} if data.ship else {}),
    }
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n"


def write_atomically(files: dict[Path, str]) -> None:
    """Every file complete before any is renamed into place (posttrain._files)."""
    write_texts_atomic(files)
