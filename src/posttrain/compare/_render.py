"""The compare document as a rich table for the terminal."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from posttrain._numbers import fmt_p
from posttrain._terminal import esc

_SHORT = {"no significant difference": "n.s."}
_VERDICT_STYLE = {"better": "bold green", "worse": "bold red", "no significant difference": "dim"}


def _proportion(c: dict) -> bool:
    # Wilson/binary or values that look like proportions are shown in points (×100).
    sides = [c["new"]["mean"], c["baseline"]["mean"]]
    return c["binary"] or all(m is not None and 0 <= m <= 1 for m in sides)


def _fmt(x: float | None, scale: float, signed: bool = False) -> str:
    if x is None:
        return "–"
    v = x * scale
    if scale == 100:
        return f"{v:+.1f}" if signed else f"{v:.1f}"
    return f"{v:+.4g}" if signed else f"{v:.4g}"


def _ci(ci: list | None, scale: float, signed: bool = False) -> str:
    return "" if not ci or ci[0] is None else f" [{_fmt(ci[0], scale, signed)}, {_fmt(ci[1], scale, signed)}]"


def _n(c: dict) -> str:
    """Paired items, and (+k) for items only one side has, which the statistics leave out."""
    unpaired = (c.get("n_only_new") or 0) + (c.get("n_only_baseline") or 0)
    return f"{c['n']} (+{unpaired} unpaired)" if unpaired else str(c["n"])


def _unpaired_note(c: dict) -> str | None:
    only_new, only_base = c.get("n_only_new") or 0, c.get("n_only_baseline") or 0
    if not only_new and not only_base:
        return None
    return (f"{c['task']}: {only_new} item(s) only in {c['new_label']} and {only_base} only in "
            f"{c['baseline_label']} are not paired and not counted")


def render_table(doc: dict) -> Table:
    """One row per comparison: both means with CIs, Δ with CI, p, Holm p, verdict, MDE; the
    sentences go under the table, with a line for every comparison that left items unpaired."""
    level = f"{100 * (1 - doc['alpha']):g}%"
    notes = [c["sentence"] for c in doc["comparisons"]]
    notes += [n for c in doc["comparisons"] if (n := _unpaired_note(c))]
    # Labels, task names and sentences come from the user's files: escaped, never read as markup.
    table = Table(title=f"{esc(doc['new']['label'])} vs {esc(doc['baseline']['label'])}  (α = {doc['alpha']}, Holm; n.s. = no significant difference; "
                        "points = ×100 for proportions)",
                  caption="\n".join(esc(n) for n in notes), caption_justify="left",
                  show_lines=False)
    family = len(doc.get("pairs", [])) > 1
    if family:
        table.add_column("new vs baseline")
    table.add_column("task / metric")
    for name in ("n", f"new ({level} CI)", f"baseline ({level} CI)", f"Δ ({level} CI)", "p", "p Holm"):
        # "< 1e-40" is one value: never folded between its two halves.
        table.add_column(name, justify="right", no_wrap=name.startswith("p"))
    table.add_column("verdict")
    table.add_column("MDE 80%", justify="right")
    for c in doc["comparisons"]:
        scale = 100.0 if _proportion(c) else 1.0
        d = c["diff"]
        what = c["task"] if c["metric"] == "acc" else f"{c['task']} {c['metric']}"
        if c["filter"] != "none":
            what += f" ({c['filter']})"
        if d.get("n_clusters"):
            what += f" [{d['n_clusters']} {d.get('cluster_key') or 'cluster'}s]"
        cells = [
            esc(what), _n(c),
            _fmt(c["new"]["mean"], scale) + _ci(c["new"]["ci"], scale),
            _fmt(c["baseline"]["mean"], scale) + _ci(c["baseline"]["ci"], scale),
            _fmt(d["mean"], scale, True) + _ci(d["ci"], scale, True),
            fmt_p(c["test"]["p_value"], missing="–"), fmt_p(c["p_adjusted"], missing="–"),
            Text(_SHORT.get(c["verdict"], c["verdict"]), style=_VERDICT_STYLE.get(c["verdict"], "")),
            _fmt(c["mde_80"], scale),
        ]
        if family:
            cells.insert(0, esc(f"{c['new_label']} vs {c['baseline_label']}"))
        table.add_row(*cells)
    return table
