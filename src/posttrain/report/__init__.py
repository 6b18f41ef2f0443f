"""Reports for a run: `report.html` (one self-contained page with plots), `report.md` (for a PR
comment or a terminal) and `report.json` (schema `posttrain.report/1`, embedding the compare
document unchanged); and the index page of all runs.

Inputs of `write_report` (plain dicts; unknown keys are kept):

- `compare`: the `posttrain.compare/1` document (see docs/ARCHITECTURE.md), or {} when the run
  made no comparison.
- `run`: id, checkpoint, model_name, baseline, created_at, status (and optionally finished_at).
- `variants`: one per GGUF file from the convert manifest: quant, path, sha256, size_bytes,
  kld_vs_f16, top1_vs_f16 (null for F16 or when not measured).
- `evals`: one per aggregate score: label (the run_evals label, e.g. "tiny-Q4_K_M"), task (the
  group when reported as a group), metric, filter (default "none"), value, ci ([lo, hi], 95%),
  n, task_hash, seconds; optionally role ("candidate"/"baseline") and quant (the variant it
  belongs to; otherwise inferred from a label ending in "-<quant>").
- `steps`: name, status, wall_s, peak_rss_bytes, error — in pipeline order.
- `environment`: name → version or value (posttrain, llama.cpp, lm-eval, python, ...).
- `failures`: step, error — the stages that failed, first one first.
- `tracking`: tracker, ok, run, where, note, error — what each experiment tracker did (`track.json`).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from posttrain.contracts import RunLayout
from posttrain.report._index import index_rows, write_index
from posttrain.report._model import (
    COMPARE_SCHEMA,
    REPORT_SCHEMA,
    ReportInput,
    strip_thinking,
)
from posttrain.report._render import (
    build_view,
    render_html,
    render_json,
    render_markdown,
    write_atomically,
)
from posttrain.store import Store

REPORT_FILES = ("report.html", "report.md", "report.json")


def write_report(out_dir: Path, *, compare: dict[str, Any], run: dict[str, Any], variants: list[dict[str, Any]],
                 evals: list[dict[str, Any]], steps: list[dict[str, Any]], environment: dict[str, Any],
                 failures: list[dict[str, Any]] | None = None,
                 tracking: list[dict[str, Any]] | None = None,
                 adapter: dict[str, Any] | None = None, ship: dict[str, Any] | None = None,
                 reference: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write report.html, report.md and report.json into `out_dir` (atomically) and return
    {"html": path, "md": path, "json": path}. See the module docstring for what each input holds."""
    data = ReportInput(compare=compare, run=run, variants=variants, evals=evals, steps=steps,
                       environment=environment, failures=failures or [], tracking=tracking or [],
                       adapter=adapter, ship=ship or {}, reference=reference)
    view = build_view(data)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = RunLayout(out_dir)
    paths = {"html": layout.report_html, "md": layout.report_md, "json": layout.report_json}
    write_atomically({paths["html"]: render_html(view), paths["md"]: render_markdown(view),
                      paths["json"]: render_json(data, view)})
    return paths


def report_from_store(store: Store, run_id: str, out_dir: Path | None = None, *,
                      outcome: str | None = None, compare: dict[str, Any] | None = None,
                      not_yet: Collection[str] = ()) -> dict[str, Path]:
    """Gather a run's inputs from the store, and write its report (into the run's folder unless
    `out_dir` is given). `outcome`: the run's status when the report is written before the run is
    closed (the pipeline's report step); the store's otherwise. `compare`: the run's compare document
    ({} for none); by default `<run_dir>/compare.json`. `not_yet`: steps that have not run yet in
    this attempt (the pipeline's steps after the report): shown pending, as in a first attempt, not
    with what an earlier, interrupted attempt recorded for them."""
    from posttrain.report._gather import gather

    inputs, folder = gather(store, run_id, compare, not_yet)
    if outcome is not None:
        inputs["run"] = {**inputs["run"], "status": outcome}
    return write_report(out_dir or folder, **inputs)


__all__ = [
    "COMPARE_SCHEMA",
    "REPORT_FILES",
    "REPORT_SCHEMA",
    "index_rows",
    "report_from_store",
    "strip_thinking",
    "write_index",
    "write_report",
]
