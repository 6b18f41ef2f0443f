"""`posttrain report RUN` and `posttrain runs [--html]`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from posttrain._files import refuse_foreign
from posttrain._terminal import fit_table
from posttrain.cli._app import app, console, esc
from posttrain.cli._display import command_log, long_command
from posttrain.cli._options import home_option
from posttrain.errors import PosttrainError

_HOME_HELP = "posttrain home holding posttrain.db (default: $POSTTRAIN_HOME)."
_FORCE_HELP = "Replace files at --out that posttrain did not write (its own are replaced without it)."


def _open_store(home: Path | None):
    from posttrain.paths import store_path
    from posttrain.store import Store

    db = store_path(home)
    if not db.exists():
        raise PosttrainError(f"no posttrain store at {db}", remedy="pass --home DIR or set POSTTRAIN_HOME")
    return Store(db)


@app.command("report")
def report_cmd(
    run_id: str = typer.Argument(..., help="Run id (see `posttrain runs`)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the report files (default: the run's folder)."),
    home: Path | None = home_option(),
    force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
) -> None:
    """Write report.html (self-contained, with plots), report.md and report.json for RUN."""
    from posttrain.contracts import RunLayout

    store = _open_store(home)
    if out is not None:
        # The report's files named by the run layout, not by posttrain.report: that import is seconds long.
        layout = RunLayout(out)
        refuse_foreign([layout.report_html, layout.report_md, layout.report_json], force=force)
    # matplotlib draws the plots (and says so when it first builds its font cache): its output goes to the log.
    with long_command(command_log("report", home), title=f"report of run {run_id}") as display:
        display.begin("drawing the plots, writing the report")
        # Here, on the display: the report package brings matplotlib, scipy and statsmodels.
        from posttrain.report import report_from_store

        paths = report_from_store(store, run_id, out)
    for kind in ("html", "md", "json"):
        console.print(f"wrote {esc(paths[kind])}", highlight=False, soft_wrap=True)


@app.command("runs")
def runs_cmd(
    html: bool = typer.Option(False, "--html", help="Also write the index page (leaderboard linking each report)."),
    out: Path | None = typer.Option(None, "--out", help="Index page path (default: HOME/runs/index.html)."),
    home: Path | None = home_option(),
    force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
) -> None:
    """List the runs in the store, newest first: one line each, with its variants and verdicts."""
    store = _open_store(home)
    index_path = out or store.path.parent / "runs" / "index.html"
    if html:
        refuse_foreign([index_path], force=force)  # before anything is printed or written
    # The report package brings matplotlib, scipy and statsmodels: seconds of imports on a slow machine,
    # so a stage of the display (and their messages, a font cache being built, go to the log file).
    with long_command(command_log("runs", home)) as display:
        display.begin(f"reading the runs in {store.path.name}" + (" and writing the index page" if html else ""))
        from posttrain.report import index_rows, write_index

        runs = _one_row_per_run(index_rows(store))
        index = write_index(store, index_path) if html else None
    table = Table(title=f"runs in {esc(store.path)}", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    # One line per run: no cell wraps (ids are copied into `posttrain report RUN`, and a list of runs
    # reads down its first column); at 80 columns the less telling columns go instead. Each variant's
    # size, KLD and scores are in the run's report and on the `--html` page.
    for col in ("run", "created", "status", "quants", "verdicts"):
        table.add_column(col, no_wrap=True, overflow="ellipsis")
    for r in runs:
        cells = (r["run_id"], (r["created_at"] or "")[:16].replace("T", " "), r["status"] or "",
                 " ".join(r["quants"]) or "—", _verdict_words(r["verdict_counts"]))
        table.add_row(*(Text(c) for c in cells))  # Text: names like "[red]x" are shown, not parsed as markup
    if runs:
        console.print(fit_table(table, console.width, drop=("created", "quants", "status")))
        if any(r["verdict_counts"].get(_NSD) for r in runs):
            console.print("n.s.: no significant difference", style="dim", highlight=False)
    else:
        console.print(f"no runs in {esc(store.path)}", highlight=False, soft_wrap=True)
    if index is not None:
        console.print(f"wrote {esc(index)}", highlight=False, soft_wrap=True)


_NSD = "no significant difference"


def _one_row_per_run(rows: list[dict]) -> list[dict]:
    """The index's rows (one per run and variant) folded into one per run, in the same order."""
    runs: dict[str, dict] = {}
    for r in rows:
        run = runs.setdefault(r["run_id"], {**r, "quants": []})
        if r["quant"]:
            run["quants"].append(r["quant"])
    return list(runs.values())


def _verdict_words(counts: dict[str, int]) -> str:
    """'2 better, 1 n.s.': a run's comparisons by verdict, short enough for one line."""
    words = {"better": "better", "worse": "worse", _NSD: "n.s."}
    return ", ".join(f"{counts[v]} {w}" for v, w in words.items() if counts.get(v))
