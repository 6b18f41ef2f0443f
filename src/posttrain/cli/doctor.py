"""`posttrain doctor`: what is installed and usable, and the command that fixes what is not."""

from __future__ import annotations

import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import typer
from rich.table import Table

from posttrain.checkpoint import human_bytes
from posttrain.cli._app import app, console
from posttrain.errors import PosttrainError


def _pkg(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


@app.command("doctor")
def doctor(
    out: Path = typer.Option(Path("."), "--out", help="Output directory whose free space to check."),
    ollama_url: str = typer.Option("http://127.0.0.1:11434", "--ollama", envvar="OLLAMA_HOST",
                                   help="Ollama server to probe."),
    provision: bool = typer.Option(False, "--provision", help="Fetch llama.cpp's converter now if it is missing."),
    llama_cpp_dir: Path = typer.Option(None, "--llama-cpp-dir", envvar="POSTTRAIN_LLAMA_CPP_DIR"),
) -> None:
    """Check the toolchain: llama.cpp, converter, lm-eval, torch, transformers, Ollama, disk."""
    from posttrain import toolchain

    table = Table("component", "status", "detail / fix")
    ok = True

    def row(name: str, good: bool, detail: str) -> None:
        nonlocal ok
        ok &= good
        table.add_row(name, "[green]ok[/]" if good else "[red]missing[/]", detail)

    llama = _pkg("llama-cpp-python")
    if llama:
        info = toolchain.build_info()
        row("llama-cpp-python", "error" not in info,
            f"{llama}; {info.get('system_info', info.get('error', ''))}; GPU offload: {info.get('gpu_offload')}")
    else:
        row("llama-cpp-python", False, "pip install 'llama-cpp-python[server]'")
    if llama:
        try:
            tree = toolchain.find_converter(llama_cpp_dir, provision=provision)
            row("converter", True, tree.describe())
        except PosttrainError as e:
            row("converter", False, e.one_line())
    for dist, fix in (("lm-eval", "pip install 'lm-eval>=0.4.13'"), ("torch", "pip install torch==2.13.0"),
                      ("transformers", "pip install transformers"), ("ollama", "pip install ollama")):
        v = _pkg(dist)
        row(dist, v is not None, v or fix)
    try:
        import ollama

        server = ollama.Client(host=ollama_url, timeout=3).ps  # cheap endpoint
        server()
        row("ollama server", True, f"reachable at {ollama_url}")
    except Exception as e:  # unreachable is a normal state: registration is then skipped
        table.add_row("ollama server", "[yellow]absent[/]",
                      f"not reachable at {ollama_url} ({type(e).__name__}); registration will be skipped")
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    row("disk", free > 2_000_000_000, f"{human_bytes(free)} free at {out.resolve()}")
    console.print(table)
    if not ok:
        raise typer.Exit(1)
