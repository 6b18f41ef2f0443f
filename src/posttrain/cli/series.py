"""`posttrain series FOLDER`: the checkpoint series of one training run, from the store."""

from __future__ import annotations

from pathlib import Path

import typer

from posttrain.cli._app import app, console, esc
from posttrain.cli._display import command_log, long_command
from posttrain.cli._options import home_option
from posttrain.errors import PosttrainError


@app.command("series")
def series_cmd(
    folder: Path = typer.Argument(..., help="The training run's output folder (checkpoint-N/, final_model/)."),
    home: Path | None = home_option(),
    # One variant, not a ladder: --variant, so that -q/--quant keeps one meaning (a list) on every command.
    quant: str | None = typer.Option(None, "--variant", metavar="QUANT",
                                     help="Which GGUF variant stands for each checkpoint "
                                          "(default: the first quant of the runs, f16 by default, which stands for each run's reference: BF16 where it chose that)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level (Holm over the series) and 1 − CI level."),
) -> None:
    """Score per task against the training step, each checkpoint paired with the previous and the final
    one, and the best checkpoint: series.html, series.md and series.json under HOME/series/.

    Reads what `posttrain watch --series` (or `posttrain run` on each checkpoint) evaluated; evaluates nothing.
    """
    from posttrain import paths
    from posttrain.store import Store

    if not 0 < alpha < 1:
        raise PosttrainError(f"--alpha must lie between 0 and 1, got {alpha:g}")
    db = paths.store_path(home)
    if not db.exists():
        raise PosttrainError(f"no posttrain store at {db}", remedy="pass --home DIR or set POSTTRAIN_HOME")
    base = db.parent
    # matplotlib draws the plot (and says so when it first builds its font cache): its output goes to the log.
    with long_command(command_log("series", home), title=f"series of {folder}") as display:
        display.begin("pairing the checkpoints, writing the series report")
        # Imported here, on the display: the statistics and the plot bring scipy, statsmodels and matplotlib.
        from posttrain.series import series_report

        doc, layout = series_report(Store(db), base, folder, quant=quant, alpha=alpha)
    if doc.best is not None:
        console.print(esc(doc.best.sentence), highlight=False)
    for p in doc.pending:
        console.print(f"not in the series: {esc(p.label)}: {esc(p.reason)}", highlight=False)
    console.print(f"series: {esc(layout.html)}", highlight=False, soft_wrap=True)
