"""series.md and series.html from the series document. HTML is autoescaped (labels and sentences
come from folder names and task names, which are not ours); only the sanitised SVG bypasses it."""

from __future__ import annotations

import jinja2
from markupsafe import Markup

from posttrain._markdown import md_escape
from posttrain._numbers import fmt_p
from posttrain.series._model import SeriesDoc
from posttrain.series._plot import series_plot

# The report's stylesheet (`_style.css.j2`) is shared, so a series page looks like a run's report.
_LOADER = jinja2.ChoiceLoader([jinja2.PackageLoader("posttrain.series", "templates"),
                               jinja2.PackageLoader("posttrain.report", "templates")])


def _num(x, proportion: bool = True) -> str:
    if x is None:
        return "—"
    return f"{round(x * 100, 1) + 0.0:.1f}" if proportion else f"{x + 0.0:.4g}"


def _ci(ci, proportion: bool = True) -> str:
    if not ci or None in ci:
        return "—"
    return f"[{_num(ci[0], proportion)}, {_num(ci[1], proportion)}]"


def _signed(x, proportion: bool = True) -> str:
    if x is None:
        return "—"
    # + 0.0: a difference of nothing read from the other side is -0.0, shown as 0.0
    return f"{round(x * 100, 1) + 0.0:+.1f}" if proportion else f"{x + 0.0:+.4g}"


def _env(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=_LOADER, autoescape=autoescape, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(num=_num, ci=_ci, signed=_signed, pvalue=fmt_p, md=md_escape)
    return env


def _view(doc: SeriesDoc) -> dict:
    """Table rows: one per (task, metric, filter), one column per checkpoint."""
    keys = sorted({(s.task, s.metric, s.filter) for p in doc.points for s in p.scores})
    rows = []
    for task, metric, flt in keys:
        cells = [next((s for s in p.scores if (s.task, s.metric, s.filter) == (task, metric, flt)), None)
                 for p in doc.points]
        proportion = all(c is None or c.mean is None or 0 <= c.mean <= 1 for c in cells)
        rows.append({"task": task, "metric": metric, "filter": flt, "cells": cells, "proportion": proportion})
    proportion = {(r["task"], r["metric"], r["filter"]): r["proportion"] for r in rows}
    return {"doc": doc, "rows": rows, "proportion": proportion, "level": f"{100 * (1 - doc.alpha):g}%",
            "name": doc.folder.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or doc.folder}


def render_markdown(doc: SeriesDoc) -> str:
    return _env(autoescape=False).get_template("series.md.j2").render(**_view(doc))


def render_html(doc: SeriesDoc) -> str:
    svg = series_plot(doc)
    return _env(autoescape=True).get_template("series.html.j2").render(**_view(doc),
                                                                      plot=Markup(svg) if svg else None)
