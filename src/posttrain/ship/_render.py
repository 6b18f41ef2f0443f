"""The "Which quant to ship" section: the sentence, the ladder table and the size-vs-quality plot.

Rendered from the ship document alone (ship.json), so the standalone `posttrain ship` output and the
pipeline's report show the same thing. Markdown cells and HTML text are escaped: task names and
variant names come from outside.
"""

from __future__ import annotations

import html
from pathlib import Path

from posttrain.checkpoint import human_bytes
from posttrain._run_conditions import BUSY_OTHERS_PCT
from posttrain.ship._verdict import fmt_margin

STATUS_WORDS = {"equivalent": "equivalent", "not equivalent": "not shown equivalent", "undecided": "undecided (n)",
                "kld above bound": "KLD above bound", "no tasks": "–"}


def _md(text: str) -> str:
    """One Markdown table cell: pipes and line breaks cannot break the table, markup is shown as typed."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _f(x, spec: str, none: str = "–") -> str:
    return none if x is None else format(x, spec)


def _ci_pts(t: dict) -> str:
    lo, hi = t["ci95"] or (None, None)
    if lo is None:
        return _f(t.get("mean") and t["mean"] * 100, "+.1f")
    return f"{t['mean'] * 100:+.1f} ({lo * 100:+.1f}, {hi * 100:+.1f})"


def _busy(sp: dict) -> bool:
    return bool((sp.get("conditions") or {}).get("busy"))


def _speed_cell(sp: dict, key: str, spec: str) -> str:
    """A speed figure, marked where other work shared the CPUs while it was measured (notes say how much)."""
    return _f(sp.get(key), spec) + (" (busy)" if sp.get(key) is not None and _busy(sp) else "")


def table(doc: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the ladder (plain text cells, unescaped), F16 first, then by size."""
    tasks = sorted(doc.get("tasks", {}))
    verdicts = {v["quant"]: v for v in doc["verdict"]["variants"]}
    head = ["variant", "bits/weight", "size", "pp512 tok/s", "tg128 tok/s", "mean KLD ± SE", "p99 KLD",
            "same top %", "RMS Δp %", "ΔPPL (95% CI)", *[f"Δ {t} pts (95% CI)" for t in tasks], "verdict"]
    rows = []
    # A variant made with an importance matrix sits right after its plain twin (ordered by the twin's size).
    sizes = {v["quant"]: v["size_bytes"] for v in doc["variants"]}

    def order(v: dict) -> tuple:
        twin = v["quant"].removesuffix("-imatrix") if v.get("imatrix") else v["quant"]
        return v["quant"] != "F16", -sizes.get(twin, v["size_bytes"]), bool(v.get("imatrix"))

    for v in sorted(doc["variants"], key=order):
        sp, q = v.get("speed") or {}, v.get("quality") or {}
        verdict = verdicts.get(v["quant"])
        if v["quant"] == "F16":
            quality_cells = ["reference", "", "", "", _f(doc.get("f16_ppl"), ".3f", "–") + " (PPL)"]
            task_cells = [f"{doc['tasks'][t]['f16_mean'] * 100:.1f} (F16 score)" if doc["tasks"][t].get("f16_mean")
                          is not None else "–" for t in tasks]
            status = "reference"
        else:
            quality_cells = [f"{_f(q.get('kld_mean'), '.4f')} ± {_f(q.get('kld_se'), '.4f')}" if q else "–",
                             _f(q.get("kld_p99"), ".4f"), _f(q.get("same_top_pct"), ".1f"), _f(q.get("rms_dp_pct"), ".2f"),
                             (f"{q['delta_ppl']:+.3f} ({q['delta_ppl_ci'][0]:+.3f}, {q['delta_ppl_ci'][1]:+.3f})"
                              if q else "–")]
            task_cells = [_ci_pts(verdict["tasks"][t]) if verdict and t in verdict["tasks"] else "–" for t in tasks]
            status = STATUS_WORDS.get(verdict["status"], verdict["status"]) if verdict else "–"
            if verdict and doc["verdict"]["pick"] == v["quant"]:
                # Documents written before strengths existed picked only what was shown equivalent.
                status = f"**ship this** ({doc['verdict'].get('strength', 'shown')})"
        rows.append([v["quant"], _f(sp.get("bits_per_weight"), ".2f"), human_bytes(v["size_bytes"]),
                     _speed_cell(sp, "pp_tok_s", ".0f"), _speed_cell(sp, "tg_tok_s", ".1f"), *quality_cells, *task_cells,
                     status])
    return head, rows


def notes(doc: dict) -> list[str]:
    text = doc["text"]
    v = doc["verdict"]
    source = ("the evaluation tasks' own documents (no --text given)" if text.get("kind") != "user"
              else ", ".join(Path(f).name for f in text.get("files", [])) or "the given text")
    out = [f"Quality on {text.get('n_scored', 0):,} scored tokens ({text.get('n_chunks', 0)} chunks of "
           f"{text.get('n_ctx')}) of {source}; KLD statistics as llama-perplexity --kl-divergence defines them, "
           "ΔPPL's interval paired over chunks.",
           f"Equivalence: TOST against F16 with a margin of {fmt_margin(v['margin'])} per task, Holm over "
           f"tasks × variants at α {v['alpha']:g}; mean KLD bound {v['max_kld']}."]
    if v.get("strength") is not None:
        out.append(f"Strength of the pick: shown (equivalence on every task), indicated (the tasks cannot decide; "
                   f"mean KLD's 95% upper bound ≤ {v['indicate_kld']:.3g}, llama.cpp's Q4_K_M level on Llama-3-8B, "
                   f"and no task shows it worse than the margin; within the margin in ≥ "
                   f"{v['indicated_rate']:.0%} of simulated ladders, docs/ship.md) or none (F16 stays).")
    imatrix = doc.get("imatrix")
    if imatrix:
        files = ", ".join(Path(f).name for f in imatrix.get("text_files", [])) or "the given text"
        out.append(f"Variants named …-imatrix were quantized with an importance matrix that llama.cpp's llama-imatrix "
                   f"computed on the F16 from {files} (chunks of {imatrix['options']['chunk']}, at most "
                   f"{imatrix['options']['max_chunks']}; sha256 {imatrix['sha256'][:12]}…); the others without one.")
    speeds = [x["speed"] for x in doc["variants"] if x.get("speed")]
    if speeds:
        out.append(f"Speed: median of {speeds[0]['reps']} runs, {speeds[0]['threads']} threads, "
                   f"build: {speeds[0]['build']}")
        out += _conditions_note(doc)
    return out


def _conditions_note(doc: dict) -> list[str]:
    """What else the machine did during the speed runs (measurements older than the record say nothing)."""
    measured = [(x["quant"], x["speed"]["conditions"]) for x in doc["variants"]
                if x.get("speed") and x["speed"].get("conditions")]
    if not measured:
        return []
    busy = [(q, c) for q, c in measured if c["busy"]]
    if not busy:
        return [(f"The machine was free during the speed runs: other work used at most "
                 f"{max(c['others_cpu_pct'] for _, c in measured):.0f}% of its {measured[0][1]['cpus']} CPUs.")]
    shares = [c["others_cpu_pct"] for _, c in busy]
    loads = [c["load_avg_1m"] for _, c in busy]
    span = f"{min(shares):.0f}%" if min(shares) == max(shares) else f"{min(shares):.0f}–{max(shares):.0f}%"
    return [(f"Speed figures marked (busy) ({', '.join(q for q, _ in busy)}) were measured while other work used "
             f"{span} of the {busy[0][1]['cpus']} CPUs (load average up to {max(loads):.1f}; busy means over "
             f"{BUSY_OTHERS_PCT:g}%): they are lower than this machine gives alone and do not compare with figures "
             "measured under another load; rerun with the machine free for figures to quote.")]


def render_markdown(doc: dict, plot_file: str | None = None) -> str:
    head, rows = table(doc)
    lines = ["## Which quant to ship", "", _md(doc["verdict"]["sentence"]), "",
             "| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    lines += [""] + [f"- {_md(n)}" for n in notes(doc)]
    if plot_file:
        lines += ["", f"![size against KLD and Δ accuracy]({plot_file})"]
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats on both size and loss (smaller is better on both)."""
    front, best = [], float("inf")
    for name, size, loss in sorted(points, key=lambda p: (p[1], p[2])):
        if loss < best:
            front.append(name)
            best = loss
    return front


def plot(doc: dict) -> str | None:
    """Size against mean KLD and against the worst Δ accuracy over tasks: the pick ringed, the Pareto
    front joined. A sanitised inline SVG (posttrain._plotting), or None when nothing was measured."""
    import matplotlib

    from posttrain._plotting import BASE_RC, LOCK, figure, render_svg

    verdicts = {v["quant"]: v for v in doc["verdict"]["variants"]}
    pick = doc["verdict"]["pick"]
    kld_pts, acc_pts = [], []
    for v in doc["variants"]:
        q, mb = v.get("quality") or {}, v["size_bytes"] / 1e6
        if v["quant"] == "F16":
            kld_pts.append(("F16", mb, 0.0))
            if doc.get("tasks"):
                acc_pts.append(("F16", mb, 0.0))
            continue
        if q.get("kld_mean") is not None:
            kld_pts.append((v["quant"], mb, q["kld_mean"]))
        tasks = verdicts.get(v["quant"], {}).get("tasks", {})
        if tasks:
            acc_pts.append((v["quant"], mb, -min(t["mean"] for t in tasks.values()) * 100))  # worst loss, points
    if len(kld_pts) < 2:
        return None
    with LOCK, matplotlib.rc_context(BASE_RC):
        fig = figure(9.0, 3.4)
        axes = fig.subplots(1, 2 if acc_pts else 1, squeeze=False)[0]
        for ax, pts, ylabel in ((axes[0], kld_pts, "mean KLD vs F16 (nats)"),
                                *(((axes[1], acc_pts, "worst loss over tasks (points)"),) if acc_pts else ())):
            front = pareto_front(pts)
            ax.scatter([p[1] for p in pts], [p[2] for p in pts], color="#57606a", s=18, zorder=2)
            fp = [p for p in sorted(pts, key=lambda p: p[1]) if p[0] in front]
            ax.plot([p[1] for p in fp], [p[2] for p in fp], color="#0969da", linewidth=1.2, zorder=1,
                    label="Pareto front")
            for name, x, y in pts:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
                if name == pick:
                    ax.scatter([x], [y], s=140, facecolors="none", edgecolors="#1a7f37", linewidths=2, zorder=3,
                               label=f"pick: {name}")
            ax.set_xlabel("file size (MB)")
            ax.set_ylabel(ylabel)
            ax.grid(color="#eaeef2")
            ax.legend(fontsize=7, frameon=False)
        return render_svg(fig, "ship")


def render_html(doc: dict) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                      autoescape=select_autoescape(["html", "j2"]))
    head, rows = table(doc)
    return env.get_template("ship.html.j2").render(doc=doc, head=head, rows=rows, notes=notes(doc),
                                                   plot_svg=plot(doc))
