"""Score against training step, one line per task with its 95% CI bars: a sanitised inline SVG drawn
by posttrain._plotting (matplotlib, text as real <text>, ids prefixed)."""

from __future__ import annotations

from statistics import median

from posttrain.series._build import main_metrics
from posttrain.series._model import SeriesDoc


def _positions(doc: SeriesDoc) -> tuple[list[float], list[str]]:
    """An x for each point: its step; a point without one (a final model without trainer_state.json)
    one usual gap after the one before it, labelled by its name."""
    known = [p.step for p in doc.points if p.step is not None]
    gaps = [b - a for a, b in zip(known, known[1:]) if b > a]
    gap = median(gaps) if gaps else 1.0
    xs, ticks, last = [], [], None
    for p in doc.points:
        x = float(p.step) if p.step is not None else (last + gap if last is not None else 0.0)
        xs.append(x)
        ticks.append(str(p.step) if p.step is not None else p.label)
        last = x
    return xs, ticks


def series_plot(doc: SeriesDoc) -> str | None:
    import matplotlib

    from posttrain._plotting import BASE_RC, LOCK, figure, render_svg

    metrics = main_metrics(doc.points)
    if not doc.points or not metrics:
        return None
    xs, ticks = _positions(doc)
    with LOCK, matplotlib.rc_context(BASE_RC):
        fig = figure(7.5, 3.4)
        ax = fig.add_subplot()
        for task, (metric, flt) in metrics.items():
            scores = [next(s for s in p.scores if (s.task, s.metric, s.filter) == (task, metric, flt))
                      for p in doc.points]
            means = [s.mean for s in scores]
            lo = [s.mean - s.ci[0] if s.ci and s.ci[0] is not None else 0.0 for s in scores]
            hi = [s.ci[1] - s.mean if s.ci and s.ci[1] is not None else 0.0 for s in scores]
            name = task if metric == "acc" and flt == "none" else f"{task} {metric}" + (
                f" ({flt})" if flt != "none" else "")
            ax.errorbar(xs, means, yerr=[lo, hi], marker="o", markersize=4, capsize=3, linewidth=1.4, label=name)
        if doc.best is not None and doc.best.label in {p.label for p in doc.points}:
            bx = xs[[p.label for p in doc.points].index(doc.best.label)]
            ax.axvline(bx, color="#1a7f37", linewidth=1, linestyle="--", label=f"best: {doc.best.label}")
        ax.set_xticks(xs, ticks)
        ax.set_xlabel("training step")
        ax.set_ylabel("score (95% CI)")
        ax.grid(axis="y", color="#eaeef2")
        ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
        return render_svg(fig, "series")  # under the lock: rendering changes matplotlib's process-wide rcParams
