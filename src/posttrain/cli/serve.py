"""`posttrain serve` (llama.cpp's OpenAI-compatible server) and `posttrain register` (Ollama import)."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from posttrain.cli._app import app, console
from posttrain.cli._display import command_log, long_command
from posttrain.cli._options import home_option, n_gpu_layers_option
from posttrain.errors import PosttrainError


@app.command("serve")
def serve(
    gguf: Path = typer.Argument(..., help="The .gguf file to serve."),
    port: int | None = typer.Option(None, help="Port on 127.0.0.1 (default: a free one)."),
    ctx: int = typer.Option(4096, "--ctx", help="Context size in tokens."),
    threads: int | None = typer.Option(None, "--threads",
                                       help="CPU threads (default: physical cores; fewer is faster on a busy machine)."),
    log: Path | None = typer.Option(None, "--log", help="Write the server log here (default: a temp file)."),
    n_gpu_layers: int | None = n_gpu_layers_option(),
) -> None:
    """Serve GGUF with llama-cpp-python's OpenAI-compatible server until Ctrl-C."""
    from posttrain.serve import LlamaServer

    stop = threading.Event()
    # SIGTERM (systemd, `kill`) takes the same clean path as Ctrl-C.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with contextlib.ExitStack() as running:
        # The start (the model's load, the server's first answer) is a stage of the display; once the
        # server answers, the display ends and the terminal is the user's again.
        with long_command(command_log("serve"), title=f"serving {gguf}") as display:
            display.begin(f"starting llama.cpp's server on {gguf.name}")
            server = running.enter_context(LlamaServer(gguf, n_ctx=ctx, n_threads=threads, port=port, log_path=log,
                                                       n_gpu_layers=n_gpu_layers))
        console.print(f"serving {escape(gguf.name)} at [bold]{escape(server.url)}/v1[/] "
                      f"(log: {escape(str(server.log_path))})", highlight=False)
        console.print("Ctrl-C to stop", style="dim")
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                raise PosttrainError(f"llama.cpp server exited with code {server.process.returncode}",
                                     remedy=f"see {server.log_path}")
    console.print("stopped")


def _shown(text: str | None, limit: int = 60) -> str:
    """Model output for the terminal: control characters spelled out, markup escaped, one line."""
    flat = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in (text or ""))
    return escape(flat[:limit])


def _parse_params(pairs: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PosttrainError(f"--param {pair!r} is not key=value", remedy="e.g. --param temperature=0.2")
        key = key.strip()
        if key == "stop":  # repeatable in a Modelfile: collect every --param stop=…
            params.setdefault("stop", []).append(value)  # type: ignore[union-attr]
        else:
            params[key] = value
    return params


@app.command("register")
def register(
    target: Path = typer.Argument(..., help="A .gguf file or the directory `posttrain convert` wrote."),
    ollama: str = typer.Option("http://127.0.0.1:11434", "--ollama", help="Ollama server URL."),
    name: str | None = typer.Option(None, "--name", help="Model name (default: from the manifest or file)."),
    param: list[str] = typer.Option([], "--param", help="PARAMETER key=value (repeatable), e.g. temperature=0.2."),
    system: str | None = typer.Option(None, "--system", help="SYSTEM prompt."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="HF checkpoint to read the chat template from."),
    smoke: bool = typer.Option(True, "--smoke/--no-smoke", help="Send one short chat per variant after import."),
    home: Path | None = home_option(),
) -> None:
    """Import every GGUF variant into Ollama as {model}_{quant}:latest and write <gguf>.Modelfile."""
    from posttrain.paths import store_path
    from posttrain.serve import register_variants
    from posttrain.store import Store

    store = Store(store_path(home))
    params = _parse_params(param)  # a bad --param is one error line, before any display
    # Each variant's upload, import and smoke chat is a stage (register_variants reports them).
    with long_command(command_log("register", home), title=f"registering {target} with Ollama at {ollama}"):
        regs = register_variants(target, url=ollama, name=name, params=params, store=store,
                                 system=system, checkpoint=checkpoint, smoke=smoke)
    if regs and regs[0].skipped:
        console.print(f"[yellow]{escape(regs[0].status)}[/]; Modelfiles written beside the GGUF files", highlight=False)
        return
    table = Table("name", "digest", "blob", "status", "template", "smoke", "reply")
    for r in regs:
        table.add_row(escape(r.name), r.digest.removeprefix("sha256:")[:12], "uploaded" if r.uploaded else "reused",
                      escape(r.status), escape(r.template_family) if r.template_family else "[yellow]not set[/]",
                      f"{r.smoke_latency_s:.2f} s" if r.smoke_latency_s is not None else "-",
                      _shown(r.smoke_text))
    console.print(table)
    for r in regs:
        for w in r.warnings:
            console.print(f"[yellow]warning[/] {escape(r.name)}: {escape(w)}", highlight=False)
