"""The run index: every run and its variants in the store, newest first, linking each report."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from posttrain import __version__
from posttrain.compare import read_compare
from posttrain.contracts import RunLayout
from posttrain.report import _gather
from posttrain.report._model import display_name
from posttrain.report._render import _env, write_atomically
from posttrain.store import Store


def verdict_counts(compare: dict[str, Any]) -> dict[str, int]:
    """How many comparisons of a run came out better, worse, or with no significant difference."""
    counts: dict[str, int] = {}
    for c in compare.get("comparisons") or []:
        verdict = c.get("verdict") or "no significant difference"
        counts[verdict] = counts.get(verdict, 0) + 1
    return counts


def _verdict_summary(compare: dict[str, Any]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(verdict_counts(compare).items()))


def _href(target: Path, base: Path) -> str:
    """A relative link that a browser cannot read as a scheme ("javascript:…" from an odd run_dir)."""
    rel = Path(os.path.relpath(target.resolve(), base)).as_posix()
    if not rel.startswith(("./", "../")):
        rel = "./" + rel
    return quote(rel)


def index_rows(store: Store, link_base: Path | None = None) -> list[dict[str, Any]]:
    """One row per (run, variant) — or one per run without variants — newest run first."""
    rows: list[dict[str, Any]] = []
    for run in store.runs.newest_first():
        folder = _gather.run_dir(store, run)
        compare = read_compare(RunLayout(folder).compare_json)
        variants = _gather.load_variants(store, run)
        evals = _gather.load_evals(store, run["id"], variants)
        report = RunLayout(folder).report_html
        link = None
        if report.exists():
            link = _href(report, link_base) if link_base else str(report)
        base = {"run_id": run["id"], "created_at": run["created_at"], "model_name": run["model_name"],
                "display_name": display_name(run["model_name"], run["checkpoint"]),
                "status": run["status"], "baseline": run["baseline"], "verdict": _verdict_summary(compare),
                "verdict_counts": verdict_counts(compare), "report": link}
        if not variants:
            rows.append({**base, "quant": None, "size_bytes": None, "kld_vs_f16": None, "scores": {}})
        for v in variants:
            scores = {f"{e['task']} {e['metric']}" + ("" if e["filter"] == "none" else f" ({e['filter']})"): e["value"]
                      for e in evals if e.get("quant") == v["quant"] and e.get("role") != "baseline"}
            rows.append({**base, "quant": v["quant"], "size_bytes": v["size_bytes"],
                         "kld_vs_f16": v.get("kld_vs_f16"), "scores": scores})
    return rows


def write_index(store: Store, out: Path) -> Path:
    """Write the leaderboard page to `out` (links to reports are relative to it) and return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = index_rows(store, link_base=out.parent.resolve())
    columns: list[str] = []
    for r in rows:
        columns.extend(c for c in r["scores"] if c not in columns)
    html = _env(autoescape=True).get_template("index.html.j2").render(
        rows=rows, columns=columns, store=str(store.path), posttrain_version=__version__,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"))
    write_atomically({out: html})
    return out
