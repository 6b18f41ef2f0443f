"""The report's own plots (paired differences, the quantization ladder, stage timings), drawn with
`posttrain._plotting`: matplotlib inlined as sanitised SVG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

from posttrain._plotting import BASE_RC, figure, render_svg

COLOURS = {"better": "#1a7f37", "worse": "#cf222e", "no significant difference": "#57606a"}


@dataclass(frozen=True)
class ForestRow:
    label: str
    mean: float
    lo: float | None
    hi: float | None
    verdict: str


@dataclass(frozen=True)
class QuantBar:
    quant: str
    size_bytes: int | None
    kld: float | None
    scores: dict[str, tuple[float, float | None, float | None]]  # task -> (value, ci lo, ci hi)


def forest_plot(rows: Sequence[ForestRow]) -> str | None:
    """Paired differences (new − baseline) with their 95% CIs, one row per task/metric/filter."""
    if not rows:
        return None
    with matplotlib.rc_context(BASE_RC):
        fig = figure(7.5, 0.9 + 0.45 * len(rows))
        ax = fig.add_subplot()
        ys = list(range(len(rows)))[::-1]
        for y, r in zip(ys, rows):
            colour = COLOURS.get(r.verdict, COLOURS["no significant difference"])
            if r.lo is not None and r.hi is not None:
                ax.plot([r.lo, r.hi], [y, y], color=colour, linewidth=2.2, solid_capstyle="butt")
            ax.plot([r.mean], [y], marker="D", color=colour, markersize=6)
        ax.axvline(0.0, color="#8c959f", linewidth=1, linestyle="--")
        ax.set_yticks(ys, [r.label for r in rows])
        ax.set_xlabel("difference, new − baseline (95% CI)")
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.grid(axis="x", color="#eaeef2")
    return render_svg(fig, "forest")


def quant_chart(bars: Sequence[QuantBar], tasks: Sequence[str]) -> str | None:
    """Score per task, KL divergence vs F16 and file size, one group per quantization."""
    if not bars:
        return None
    quants = [b.quant for b in bars]
    with matplotlib.rc_context(BASE_RC):
        fig = figure(9.5, 3.2)
        ax_score, ax_kld, ax_size = fig.subplots(1, 3)

        width = 0.8 / max(1, len(tasks))
        for i, task in enumerate(tasks):
            xs, vals, err_lo, err_hi = [], [], [], []
            for j, b in enumerate(bars):
                if task in b.scores:
                    v, lo, hi = b.scores[task]
                    xs.append(j - 0.4 + width * (i + 0.5))
                    vals.append(v)
                    err_lo.append(v - lo if lo is not None else 0.0)
                    err_hi.append(hi - v if hi is not None else 0.0)
            if xs:
                ax_score.bar(xs, vals, width=width * 0.92, label=task, yerr=[err_lo, err_hi],
                             capsize=3, error_kw={"linewidth": 1})
        ax_score.set_xticks(range(len(quants)), quants)
        ax_score.set_title("score (95% CI)")
        if tasks:
            ax_score.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.12))

        klds = [b.kld if b.kld is not None else 0.0 for b in bars]
        rects = ax_kld.bar(range(len(quants)), klds, color="#8250df")
        ax_kld.bar_label(rects, labels=[("n/a" if b.kld is None else f"{b.kld:.4g}") for b in bars], fontsize=7)
        ax_kld.set_xticks(range(len(quants)), quants)
        ax_kld.set_title("KL divergence vs F16")

        sizes = [(b.size_bytes or 0) / 1e6 for b in bars]  # MB, as every size posttrain prints
        rects = ax_size.bar(range(len(quants)), sizes, color="#0969da")
        ax_size.bar_label(rects, labels=[f"{s:.1f}" for s in sizes], fontsize=7)
        ax_size.set_xticks(range(len(quants)), quants)
        ax_size.set_title("file size (MB)")
    return render_svg(fig, "quant")


def timings_chart(steps: Sequence[tuple[str, float, str]]) -> str | None:
    """Wall time per pipeline stage (name, seconds, status)."""
    steps = [s for s in steps if s[1] is not None and math.isfinite(s[1])]
    if not steps:
        return None
    with matplotlib.rc_context(BASE_RC):
        fig = figure(7.5, 0.8 + 0.35 * len(steps))
        ax = fig.add_subplot()
        ys = list(range(len(steps)))[::-1]
        colours = ["#cf222e" if status == "failed" else "#0969da" for _, _, status in steps]
        rects = ax.barh(ys, [s[1] for s in steps], color=colours)
        ax.bar_label(rects, labels=[f"{s[1]:.1f} s" for s in steps], fontsize=7, padding=2)
        ax.set_yticks(ys, [s[0] for s in steps])
        ax.set_xlabel("wall time (s)")
    return render_svg(fig, "timings")
