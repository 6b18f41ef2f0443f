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
    from posttrain.report import REPORT_FILES, report_from_store

    store = _open_store(home)
    if out is not None:
        refuse_foreign([out / name for name in REPORT_FILES], force=force)
    # matplotlib draws the plots (and says so when it first builds its font cache): its output goes to the log.
    with long_command(command_log("report", home), title=f"report of run {run_id}") as display:
        display.begin("drawing the plots, writing the report")
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
    """List the runs in the store, newest first, with their variants and verdicts."""
    from posttrain.report import index_rows, write_index
    from posttrain.report._render import fmt_bytes, fmt_num

    store = _open_store(home)
    index_path = out or store.path.parent / "runs" / "index.html"
    if html:
        refuse_foreign([index_path], force=force)  # before anything is printed or written
    rows = index_rows(store)
    table = Table(title=f"runs in {esc(store.path)}", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("run", no_wrap=True)  # ids are copied into `posttrain report RUN`: never split them
    for col in ("created", "model", "status", "quant", "size", "KLD vs F16", "scores", "verdict"):
        table.add_column(col, overflow="fold", justify="right" if col in ("size", "KLD vs F16") else "left")
    for r in rows:
        scores = "\n".join(f"{k} {fmt_num(v)}" for k, v in r["scores"].items())
        cells = (r["run_id"], (r["created_at"] or "")[:19], r["model_name"] or "", r["status"] or "",
                 r["quant"] or "—", fmt_bytes(r["size_bytes"]), fmt_num(r["kld_vs_f16"], 5), scores, r["verdict"])
        table.add_row(*(Text(c) for c in cells))  # Text: names like "[red]x" are shown, not parsed as markup
    if rows:
        # At 80 columns the less telling columns go first; the report has all of them.
        console.print(fit_table(table, console.width, drop=("KLD vs F16", "created", "size", "status", "model")))
    else:
        console.print(f"no runs in {esc(store.path)}", highlight=False, soft_wrap=True)
    if html:
        path = write_index(store, index_path)
        console.print(f"wrote {esc(path)}", highlight=False, soft_wrap=True)
