"""`posttrain ship`: which quant to ship — a measured ladder of GGUF variants and a one-sentence answer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table

from posttrain.cli._app import app, console, esc
from posttrain.cli._display import long_command
from posttrain.cli._options import n_gpu_layers_option, quant_option, tasks_option


@app.command("ship")
def ship_cmd(
    checkpoint: Path = typer.Argument(..., help="Hugging Face checkpoint directory."),
    text: Path | None = typer.Option(None, "--text", help="Held-out text FILE or DIR (≥ 10,000 tokens; .txt/.md/"
                                     ".jsonl, optionally .bz2/.gz/.xz). Without it: the tasks' own documents."),
    tasks: list[str] | None = tasks_option(help="lm-eval tasks for the equivalence test (none: quality and "
                                                "speed only)"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Local task data in the official layouts."),
    quant: list[str] = quant_option(["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "iq4_xs", "q3_k_m"],
                                    help="The ladder, llama.cpp types (F16 is always the reference)"),
    imatrix_text: Path | None = typer.Option(
        None, "--imatrix-text", help="Text FILE or DIR for an importance matrix (llama.cpp's llama-imatrix on F16): "
        "every K/IQ rung is also made with it, shown next to it as <QUANT>-imatrix. The first use builds "
        "llama-imatrix and llama-quantize from the runtime's sdist (minutes, cached per version)."),
    margin: float = typer.Option(1.0, "--margin", help="Equivalence margin in points of accuracy per task."),
    max_kld: float = typer.Option(0.1, "--max-kld", help="Mean KLD (nats) above which a variant is never picked."),
    alpha: float = typer.Option(0.05, "--alpha", help="Family-wise error rate (Holm over tasks × variants)."),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate N items per task (the same N for every variant)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the item subset."),
    n_ctx: int = typer.Option(512, "--n-ctx", help="Chunk length for the quality measurement (llama-perplexity's -c)."),
    max_tokens: int = typer.Option(20_480, "--max-tokens", help="Tokens of held-out text to use at most."),
    no_speed: bool = typer.Option(False, "--no-speed", help="Skip the pp512/tg128 speed measurement."),
    reps: int = typer.Option(3, "--reps", min=1, help="Repetitions of each speed test (median reported)."),
    verify: bool = typer.Option(False, "--verify", help="Also run convert's probe-text check (and F16 against "
                                                        "the HF model) on newly made variants."),
    name: str | None = typer.Option(None, "--name", help="Model name used in file names (default: from the folder)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default HOME/ship/<model>)."),
    home: Path | None = typer.Option(None, "--home", help="posttrain home (store and outputs)."),
    n_gpu_layers: int | None = n_gpu_layers_option(),
) -> None:
    """Convert CHECKPOINT into a ladder of quants, measure each on real text, speed and tasks, and say which to ship."""
    from posttrain import paths
    from posttrain.convert import default_model_name, parse_quant_list
    from posttrain.store import Store

    base = home or paths.home()
    model = paths.safe_name(name) if name else default_model_name(checkpoint)
    out_dir = out or base / "ship" / model
    # Every step the ladder announces (each variant's conversion, evaluation, the quality pass, the speed
    # runs) is a stage of the display; lm-eval's, datasets' and llama.cpp's output goes to the log.
    with long_command(out_dir / "logs" / "ship.log", title=f"ship: the ladder of {checkpoint}") as display:
        # The ladder's statistics bring scipy: a second or more of imports before its first step, shown.
        display.begin("loading the ladder's libraries (scipy)")
        from posttrain.ship import run_ladder, write_ship_reports

        doc = run_ladder(checkpoint, out_dir=out_dir, store=Store(paths.store_path(base)),
                         tasks=tasks or [], data_dir=data_dir,
                         quants=parse_quant_list(quant), text=text, margin_points=margin, alpha=alpha, max_kld=max_kld,
                         n_ctx=n_ctx, max_tokens=max_tokens, limit=limit, seed=seed, speed=not no_speed,
                         speed_reps=reps, n_gpu_layers=n_gpu_layers, model_name=name,
                         gguf_dir=base / "gguf" / model, verify=verify, imatrix_text=imatrix_text,
                         say=display.begin)
    files = write_ship_reports(doc, out_dir)
    from posttrain.ship import table

    head, rows = table(doc)
    # A terminal is narrow: size, generation speed, KLD, top-token agreement, the tasks and the verdict
    # (ship.md and ship.html have every column).
    keep = [i for i, h in enumerate(head) if h in ("variant", "bits/weight", "size", "tg128 tok/s", "mean KLD ± SE",
                                                     "same top %", "verdict") or h.startswith("Δ ")]
    head, rows = [head[i] for i in keep], [[r[i] for i in keep] for r in rows]
    grid = Table(title=esc(f"{doc['model_name']}: the ladder"), title_justify="left", box=box.SIMPLE_HEAD,
                 padding=(0, 1))
    for col in head:
        # A variant's name is never folded (Q4_K_M-imatrix must read as one name).
        grid.add_column(esc(col), justify="left" if col in ("variant", "verdict") else "right", overflow="fold",
                        no_wrap=col == "variant")
    for r in rows:
        grid.add_row(*(esc(c.replace("**", "")) for c in r))
    console.print(grid)
    if doc["text"].get("kind") != "user":
        console.print("quality measured on the evaluation tasks' own documents (no --text given)", style="dim")
    console.print(esc(doc["verdict"]["sentence"]), style="bold", highlight=False)
    console.print(f"report: {esc(files['html'])}  ship.json: {esc(files['json'])}", highlight=False, soft_wrap=True)
