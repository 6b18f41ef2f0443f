"""`posttrain compare NEW [NEW…] BASELINE`: paired statistics between evaluation results."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from posttrain._files import refuse_foreign, write_text_atomic
from posttrain._terminal import fit_table
from posttrain.cli._app import app, console, esc
from posttrain.cli._options import home_option
from posttrain.errors import PosttrainError


@app.command("compare")
def compare_cmd(
    sources: list[str] = typer.Argument(..., metavar="NEW [NEW…] BASELINE",
                                        help="lm-eval --output_path folders (with --log_samples) or store "
                                             "references eval:ID[,ID…] / run:RUN_ID:LABEL; the last one is the baseline."),
    alpha: float = typer.Option(0.05, help="Family-wise error rate (Holm across every comparison)."),
    cluster: str = typer.Option("", help="Cluster field per task for lm-eval folders, e.g. mmlu=subject,hellaswag=source_id "
                                         "(TASK=none turns clustering off)."),
    as_json: bool = typer.Option(False, "--json", help="Print the posttrain.compare/1 JSON document instead of the table."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON document to this file."),
    mde: float | None = typer.Option(None, "--mde", help="Print how many items each task needs to detect this "
                                                         "difference (metric units, 0.02 = 2 points) at 80% power."),
    seed: int = typer.Option(0, help="Seed of the paired bootstrap."),
    n_boot: int = typer.Option(10000, "--n-boot", help="Bootstrap resamples (continuous metrics)."),
    home: Path | None = home_option(),
    force: bool = typer.Option(False, "--force", help="Replace an --out file that posttrain did not write."),
) -> None:
    """Compare NEW with BASELINE item by item: CIs, paired difference, McNemar / paired t, clustered SE,
    Holm-adjusted verdicts, minimum detectable effect."""
    from posttrain.compare import (
        check_same_settings,
        compare_family,
        items_needed,
        load_items,
        parse_clusters,
        render_table,
        task_settings,
    )

    if len(sources) < 2:
        raise PosttrainError("compare needs at least two sources: NEW BASELINE",
                             remedy="posttrain compare NEW_DIR BASELINE_DIR")
    clusters = parse_clusters(cluster)
    if out is not None:
        refuse_foreign([out], force=force)  # before any evaluation is read
    store = None
    if any(s.startswith(("eval:", "run:")) for s in sources):
        from posttrain.paths import store_path
        from posttrain.store import Store

        db = store_path(home)
        if not db.exists():
            raise PosttrainError(f"no posttrain store at {db}", remedy="pass --home DIR or set POSTTRAIN_HOME")
        store = Store(db)
    loaded = [load_items(s, store=store, clusters=clusters) for s in sources]
    labels = _distinct_labels([label for label, _ in loaded], sources)
    base_label, base_items = labels[-1], loaded[-1][1]
    pairs = [(labels[i], loaded[i][1], base_label, base_items) for i in range(len(loaded) - 1)]
    base_settings = task_settings(sources[-1], store=store)
    for i in range(len(loaded) - 1):
        check_same_settings(task_settings(sources[i], store=store), base_settings, labels[i], base_label)
    doc = compare_family(pairs, alpha=alpha, clusters=clusters, seed=seed, n_boot=n_boot,
                         sources=dict(zip(labels, sources, strict=True)))
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)
    if out is not None:
        write_text_atomic(out, text + "\n")
    if as_json:
        typer.echo(text)
    else:
        # At 80 columns the MDE and the unadjusted p go first (the JSON and the report keep them).
        console.print(fit_table(render_table(doc), console.width, drop=("MDE 80%", "p")))
    if mde is not None:
        for c in doc["comparisons"]:
            sd = c["diff"]["se"] * (c["diff"]["n_clusters"] or c["n"]) ** 0.5 if c["diff"]["se"] else None
            unit = "clusters" if c["diff"]["n_clusters"] else "items"
            try:
                need = f"{items_needed(mde, sd, alpha=alpha):,} {unit}"
            except PosttrainError as e:
                need = e.message
            line = f"{c['new_label']} vs {c['baseline_label']} {c['task']} {c['metric']} ({c['filter']}): " \
                   f"detecting {mde:g} at 80% power needs {need} (have {c['diff']['n_clusters'] or c['n']})"
            # With --json, stdout stays one parseable document; the sample sizes go to stderr.
            if as_json:
                typer.echo(line, err=True)
            else:
                console.print(esc(line), highlight=False)


def _distinct_labels(labels: list[str], sources: list[str]) -> list[str]:
    """Two folders of the same model get the same label from lm-eval; fall back to the source text."""
    if len(set(labels)) == len(labels):
        return labels
    return [f"{label} ({src})" if labels.count(label) > 1 else label for label, src in zip(labels, sources, strict=True)]
