"""`posttrain demo`: train a tiny model, let the watcher pick it up, and show the report."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from posttrain.cli._app import app, console, esc
from posttrain.cli._display import long_command, verbose_option


def _say(display, line: str) -> None:
    """The demo's messages: "doing X ..." starts a stage of the display, anything else is a line."""
    if line.endswith("..."):
        display.begin(line.removesuffix("...").strip())
    else:
        display.end()
        display.line(esc(line, one_line=False))


@app.command("demo")
def demo_cmd(
    workdir: Path = typer.Option(Path("posttrain-demo"), "--workdir", "-w",
                                 help="Where the demo writes everything (cleared when it holds an earlier demo)."),
    steps: int | None = typer.Option(None, "--steps", help="Training steps (default 400: about a minute on 2 cores)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the task, the model and training."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for training (default 1: faster than more for a model this small)."),
    verbose: bool = verbose_option(),
    lora: bool = typer.Option(False, "--lora", help="Train a LoRA adapter (PEFT) on the frozen tiny base instead: "
                                                    "both adapter routes are built and compared with the base."),
) -> None:
    """Train a tiny Llama on a small task, then watch posttrain convert, evaluate, compare and report it.

    Offline, CPU only, a few minutes. The early checkpoint is the baseline; the report says whether
    (and how significantly) the trained model beats it, for each GGUF variant.
    """
    from posttrain import paths
    from posttrain.demo import DEFAULT_STEPS, run_demo

    log_path = paths.home() / "logs" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with long_command(log_path, verbose=verbose, follow_children=True) as display:
        result = run_demo(workdir, steps=steps or DEFAULT_STEPS, seed=seed, threads=threads, lora=lora,
                          say=lambda line: _say(display, line))
    for sentence in result.verdicts:
        console.print(f"  {esc(sentence)}", highlight=False)
    total = result.stage_seconds.get("total", 0.0)
    console.print(f"demo {result.status} in {total:.0f} s", highlight=False)
    if result.report is not None:
        console.print(f"report: {esc(result.report)}", highlight=False, soft_wrap=True)
    if result.status != "succeeded" or result.report is None:
        raise typer.Exit(1)
