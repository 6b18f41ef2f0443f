"""`posttrain demo`: train a tiny model, let the watcher pick it up, and show the report."""

from __future__ import annotations

from pathlib import Path

import typer

from posttrain.cli._app import app, console, esc


@app.command("demo")
def demo_cmd(
    workdir: Path = typer.Option(Path("posttrain-demo"), "--workdir", "-w",
                                 help="Where the demo writes everything (cleared when it holds an earlier demo)."),
    steps: int | None = typer.Option(None, "--steps", help="Training steps (default 400: about a minute on 2 cores)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the task, the model and training."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for training (default 1: faster than more for a model this small)."),
    lora: bool = typer.Option(False, "--lora", help="Train a LoRA adapter (PEFT) on the frozen tiny base instead: "
                                                    "both adapter routes are built and compared with the base."),
) -> None:
    """Train a tiny Llama on a small task, then watch posttrain convert, evaluate, compare and report it.

    Offline, CPU only, a few minutes. The early checkpoint is the baseline; the report says whether
    (and how significantly) the trained model beats it, for each GGUF variant.
    """
    from posttrain.demo import DEFAULT_STEPS, run_demo

    result = run_demo(workdir, steps=steps or DEFAULT_STEPS, seed=seed, threads=threads, lora=lora,
                      say=lambda line: console.print(esc(line, one_line=False), highlight=False))
    for sentence in result.verdicts:
        console.print(f"  {esc(sentence)}", highlight=False)
    total = result.stage_seconds.get("total", 0.0)
    console.print(f"demo {result.status} in {total:.0f} s", highlight=False)
    if result.report is not None:
        console.print(f"report: {esc(result.report)}", highlight=False, soft_wrap=True)
    if result.status != "succeeded" or result.report is None:
        raise typer.Exit(1)
