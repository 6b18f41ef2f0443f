"""`posttrain check` and `posttrain make-tiny`."""

from __future__ import annotations

from pathlib import Path

import typer

from posttrain.checkpoint import human_bytes, inspect_checkpoint
from posttrain.cli._app import app, console, esc
from posttrain.cli._display import command_log, long_command


@app.command("check")
def check(
    path: Path = typer.Argument(..., help="Checkpoint directory (config.json, tokenizer, safetensors)."),
    settle: float = typer.Option(2.0, help="Seconds the files must stay unchanged."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pytorch_model.bin (pickle) weights."),
    base: Path | None = typer.Option(None, "--base", help="Base model directory of a LoRA adapter "
                                                         "(default: the base named in adapter_config.json)."),
) -> None:
    """Say whether PATH is a complete Hugging Face checkpoint or LoRA adapter, and if not, why. Exit 1 when not."""
    # The settle time is a wait like any other: it shows (and an adapter's base may be read meanwhile).
    with long_command(command_log("check"), title=f"checking {path}") as display:
        display.begin(f"reading {path.name}, waiting {settle:g} s for its files to stay unchanged")
        verdict = inspect_checkpoint(path, settle_seconds=settle, allow_pickle=allow_pickle, base=base)
    if verdict.complete and getattr(verdict, "kind", None) == "adapter":
        qlora = " (QLoRA: trained against a 4-bit base)" if verdict.qlora else ""
        console.print(f"[green]complete[/]: {esc(verdict.peft_type)} adapter, rank {verdict.rank}, on the base "
                      f"{esc(verdict.base)} ({esc(verdict.architecture)}){qlora}; routes: {', '.join(verdict.routes)}"
                      + (f" ({esc(verdict.route_note)})" if verdict.route_note else ""), highlight=False, soft_wrap=True)
        return
    if verdict.complete:
        console.print(f"[green]complete[/]: {esc(verdict.architecture)}, {len(verdict.weight_files)} weight file(s), "
                      f"{human_bytes(verdict.total_bytes)}", highlight=False)
        return
    remedy = getattr(verdict, "remedy", None)
    console.print(f"[red]incomplete[/]: {esc(verdict.reason)}" + (f" — {esc(remedy)}" if remedy else ""),
                  highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _tokenizer_kind(value: str) -> str:
    if value not in ("spm", "bpe"):
        raise typer.BadParameter(f"{value!r} is not a tokenizer kind: use spm or bpe")
    return value


@app.command("make-tiny")
def make_tiny_cmd(
    out: Path = typer.Argument(..., help="Directory to write the checkpoint to (missing, empty, or an earlier "
                                         "make-tiny output)."),
    tokenizer: str = typer.Option("spm", callback=_tokenizer_kind, help="spm (SentencePiece) or bpe (byte-level BPE)."),
    no_bos: bool = typer.Option(False, "--no-bos", help="A model that does not start with BOS (like SmolLM2)."),
    seed: int = typer.Option(0, help="Seed for weights and tokenizer data."),
    force: bool = typer.Option(False, "--force", help="Replace OUT even when it holds files make-tiny did not write."),
) -> None:
    """Write a tiny random Llama checkpoint (seconds, no download), for trying posttrain out."""
    from posttrain.tiny import make_tiny

    with long_command(command_log("make-tiny"), title=f"making a tiny checkpoint in {out}") as display:
        display.begin("writing the weights and the tokenizer (transformers)")
        path = make_tiny(out, tokenizer=tokenizer, add_bos=not no_bos, seed=seed, force=force)
    console.print(f"wrote {esc(path)}", highlight=False, soft_wrap=True)
