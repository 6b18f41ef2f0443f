"""`posttrain lora merge` and `posttrain lora gguf`: the two routes of an adapter, one at a time.

`posttrain run ADAPTER_DIR` builds both and evaluates them; these commands are for building one by hand.
"""

from __future__ import annotations

from pathlib import Path

import typer

from posttrain.cli._app import app, console, esc
from posttrain.cli._display import command_log, long_command

lora_app = typer.Typer(help="LoRA/QLoRA adapters: merge into the base, or write a GGUF adapter.",
                       no_args_is_help=True)
app.add_typer(lora_app, name="lora")

_BASE = typer.Option(None, "--base", help="Base model directory (default: the base named in adapter_config.json).")


@lora_app.command("merge")
def merge_cmd(
    adapter: Path = typer.Argument(..., help="Adapter directory (adapter_config.json, adapter_model.safetensors)."),
    out: Path = typer.Argument(..., help="Folder for the merged checkpoint (written atomically)."),
    base: Path | None = _BASE,
    force: bool = typer.Option(False, "--force", help="Replace OUT even when posttrain did not write it."),
) -> None:
    """Merge ADAPTER into its base with PEFT (CPU, the base's dtype) and write a full checkpoint to OUT."""
    from posttrain.lora import merge_adapter

    # PEFT's and transformers' messages go to the log; loading the base and merging is one stage.
    with long_command(command_log("lora-merge"), title=f"merging {adapter}") as display:
        display.begin("loading the base and the adapter, merging (PEFT)")
        path = merge_adapter(adapter, out, base=base, force=force)
    console.print(f"merged into {esc(path)}: convert it like any checkpoint (`posttrain convert`)",
                  highlight=False, soft_wrap=True)


@lora_app.command("gguf")
def gguf_cmd(
    adapter: Path = typer.Argument(..., help="Adapter directory (adapter_config.json, adapter_model.safetensors)."),
    out: Path = typer.Argument(..., help="The GGUF adapter file to write, e.g. my-lora-F16.gguf."),
    base: Path | None = _BASE,
    outtype: str = typer.Option("f16", "--outtype", help="f16, f32, bf16 or q8_0."),
    llama_cpp_dir: Path | None = typer.Option(None, "--llama-cpp-dir", help="Use this llama.cpp checkout's converter."),
) -> None:
    """Write ADAPTER as a GGUF LoRA with llama.cpp's convert_lora_to_gguf.py (for llama.cpp's --lora, Ollama's ADAPTER)."""
    from posttrain.lora import convert_adapter

    with long_command(command_log("lora-gguf"), title=f"writing {adapter} as a GGUF LoRA") as display:
        display.begin("converting (llama.cpp's convert_lora_to_gguf.py)")
        path = convert_adapter(adapter, out, base=base, outtype=outtype, llama_cpp_dir=llama_cpp_dir)
    console.print(f"wrote {esc(path)}", highlight=False, soft_wrap=True)
