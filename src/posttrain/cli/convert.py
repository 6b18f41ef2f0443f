"""`posttrain convert`: HF checkpoint → verified GGUF variants."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from posttrain.checkpoint import human_bytes
from posttrain._terminal import fit_table
from posttrain.cli._app import app, console, esc
from posttrain.cli._display import long_command, verbose_option
from posttrain.cli._options import (
    executor_option,
    n_gpu_layers_option,
    quant_option,
    ray_address_option,
    shared_dir_option,
)


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


@app.command("convert")
def convert(
    checkpoint: Path = typer.Argument(..., help="Hugging Face checkpoint directory."),
    out: Path = typer.Option(Path("gguf"), "--out", "-o", help="Directory for the GGUF files and manifest.json."),
    quant: list[str] = quant_option(["f16", "q8_0", "q4_k_m"],
                                    help="llama.cpp types: f16, q8_0, q4_k_m, q5_k_m, q6_k, iq4_xs, …"),
    name: str = typer.Option(None, "--name", help="Model name used in file names (default: from the folder)."),
    pre_tokenizer: str = typer.Option(None, "--pre-tokenizer",
                                      help="BPE pre-tokenizer name when the converter does not recognise it (e.g. gpt-2)."),
    imatrix: Path = typer.Option(None, "--imatrix", help="Importance matrix file for the quantizer."),
    llama_cpp_dir: Path = typer.Option(None, "--llama-cpp-dir", envvar="POSTTRAIN_LLAMA_CPP_DIR",
                                       help="Use this llama.cpp checkout's converter instead of the provisioned one."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the probe-text comparison against F16."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pytorch_model.bin (pickle) weights."),
    n_gpu_layers: int | None = n_gpu_layers_option(),
    verbose: bool = verbose_option(),
    force: bool = typer.Option(False, "--force", help="Replace files in --out that posttrain's manifest.json "
                                                      "there does not list (never needed for its own)."),
    executor: str = executor_option(),
    ray_address: str | None = ray_address_option(),
    shared_dir: Path | None = shared_dir_option(),
) -> None:
    """Convert CHECKPOINT to GGUF with llama.cpp's own converter and quantizer; verify every file."""
    from posttrain import paths
    from posttrain.convert import convert_checkpoint, quantizing_executor

    log_path = paths.home() / "logs" / f"convert-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with long_command(log_path, verbose=verbose, title=f"converting {checkpoint}") as display, \
            quantizing_executor(quant, executor, ray_address=ray_address, shared_dir=shared_dir) as ex:
        # Each step the converter reports (hash, convert, quantize, verify, per variant) is a stage.
        # With an executor other than local the quantizer's variants are its units (docs/executors.md).
        result = convert_checkpoint(
            checkpoint, out, quant, model_name=name, pre_tokenizer=pre_tokenizer, imatrix=imatrix,
            llama_cpp_dir=llama_cpp_dir, verify=not no_verify, allow_pickle=allow_pickle, force=force,
            n_gpu_layers=n_gpu_layers, progress=lambda variant, text: display.begin(f"{variant}: {text}"),
            executor=ex)
    table = Table(title=esc(f"{result.model_name} ← {checkpoint}"), title_justify="left")
    for col in ("variant", "file", "size", "sha256", "s", "KLD", "top-1"):
        table.add_column(col, justify="left" if col in ("variant", "file", "sha256") else "right",
                         overflow="fold")
    notes = []
    for v in result.variants:
        table.add_row(esc(v.quant), esc(v.path.name), human_bytes(v.size_bytes), v.sha256[:12],
                      "cached" if v.cached else f"{v.seconds:.1f}", _fmt(v.kld_vs_f16, ".4f"), _fmt(v.top1_vs_f16, ".3f"))
        if v.fallbacks:
            fell = ", ".join(f"{n}×{t.lower()}" for t, n in sorted(v.fallbacks.items()))
            notes.append(f"{v.quant}: {sum(v.fallbacks.values())} tensors kept out of k-quants (rows not a multiple "
                         f"of 256): {fell}; real size {human_bytes(v.size_bytes)}")
        if "vs_hf" in v.verification:
            notes.append(f"{v.quant} vs the HF model: max |Δ log p| {v.verification['vs_hf']['max_abs_dlogprob']:.4f} "
                         f"on {v.verification['vs_hf']['n_positions']} probe positions")
    console.print(fit_table(table, console.width, drop=("sha256", "s")))
    console.print("KLD, top-1: mean KL divergence (nats) and top-1 agreement with F16 on a fixed probe text.",
                  style="dim", highlight=False)
    for note in notes:
        console.print(esc(note), highlight=False)
    console.print(f"manifest: {esc(result.manifest_path)}", highlight=False, soft_wrap=True)
