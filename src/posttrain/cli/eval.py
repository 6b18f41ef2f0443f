"""`posttrain eval`: lm-evaluation-harness tasks on a GGUF (in-process llama.cpp), an HF checkpoint,
an OpenAI-compatible endpoint or an Ollama model; per-item results stored, reused when unchanged."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table

from posttrain._terminal import fit_table
from posttrain.cli._app import app, console, esc
from posttrain.cli._display import long_command, verbose_option
from posttrain.cli._options import (
    executor_option,
    home_option,
    n_gpu_layers_option,
    ray_address_option,
    shard_docs_option,
    shared_dir_option,
    tasks_option,
)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="A .gguf file, an HF checkpoint directory, ollama:NAME, "
                                          "or the served model's name with --endpoint."),
    tasks: list[str] = tasks_option(["mmlu", "gsm8k", "hellaswag"], help="lm-eval task or group names"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Local task data in the official layouts "
                                         "(gsm8k/, mmlu/, hellaswag/); without it lm-eval loads from the Hub."),
    include_path: list[Path] | None = typer.Option(None, "--include-path",
                                                   help="A directory of your own lm-eval task YAMLs (repeatable)."),
    limit: int | None = typer.Option(None, min=1, help="Evaluate N items of each task (of a task with subjects, "
                                     "N split across them; --per-subject takes over there)."),
    per_subject: int | None = typer.Option(None, "--per-subject", min=1,
                                           help="Evaluate N items per subject of tasks that have subjects (MMLU); "
                                                "other tasks keep --limit, or all their items."),
    seed: int = typer.Option(0, help="Seed for the item subset; the same seed picks the same items for every model."),
    num_fewshot: int | None = typer.Option(None, "--num-fewshot", help="Few-shot examples (default: each task's own)."),
    home: Path | None = home_option(),
    out: Path | None = typer.Option(None, "--out", help="Where lm-eval's results and samples go "
                                    "(default HOME/evals/<model>)."),
    endpoint: str | None = typer.Option(None, "--endpoint", metavar="URL", help="OpenAI-compatible completions server URL."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="Local HF tokenizer dir (with --endpoint)."),
    ollama: str | None = typer.Option(None, "--ollama", metavar="URL", help="Ollama URL, for a model given as ollama:NAME."),
    think_pattern: list[str] | None = typer.Option(None, "--think-pattern",
                                                   help="Regex of reasoning text to strip from generations "
                                                        "(repeatable; default <think>…</think>)."),
    max_gen_toks: int | None = typer.Option(None, "--max-gen-toks", help="Cap on generated tokens per item."),
    n_gpu_layers: int | None = n_gpu_layers_option(),
    executor: str = executor_option(),
    ray_address: str | None = ray_address_option(),
    shared_dir: Path | None = shared_dir_option(),
    shard_docs: int | None = shard_docs_option(),
    verbose: bool = verbose_option(),
    lora: Path | None = typer.Option(None, "--lora", help="A GGUF LoRA (posttrain lora gguf) that llama.cpp "
                                                          "applies to MODEL, a .gguf base."),
) -> None:
    """Evaluate MODEL with lm-evaluation-harness; print metric, value, 95% CI, n, seconds, tokens/s per task."""
    from posttrain import paths
    from posttrain._model_spec import ModelSpec
    from posttrain.evaluate import evaluate, sharded
    from posttrain.store import Store

    base = home or paths.home()
    store = Store(paths.store_path(base))
    # A folder under HOME/evals named after the model, never a path of its own.
    out_dir = out or base / "evals" / ModelSpec.parse(model).label
    with (long_command(out_dir / "posttrain-eval.log", verbose=verbose, title=f"evaluating {model}"),
          sharded(executor, ray_address=ray_address, shared_dir=shared_dir, data_dir=data_dir,
                  task_paths=include_path or None, shard_docs=shard_docs) as shards):
        results = evaluate(
            model, tasks, data_dir=data_dir, limit=limit,
            per_subject=per_subject, seed=seed, num_fewshot=num_fewshot, store=store, out_dir=out_dir,
            endpoint=endpoint, tokenizer=tokenizer, ollama_url=ollama, think_patterns=think_pattern or None,
            gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None, task_paths=include_path or None,
            n_gpu_layers=n_gpu_layers, shards=shards, lora=lora,
        )
    table = Table(title=esc(model), title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                  caption="n: items evaluated for that task", caption_justify="left")
    for col in ("task", "metric", "filter", "value", "95% CI", "n", "seconds", "tokens/s"):
        # Numbers stay whole in a narrow terminal; names fold onto a second line.
        text = col in ("task", "metric", "filter")
        table.add_column(col, justify="left" if text else "right", no_wrap=not text, overflow="fold")
    for r in results:
        for i, m in enumerate(r.metrics):
            first = i == 0
            ci = f"{_fmt(m.ci_low, 3)}–{_fmt(m.ci_high, 3)}" if m.ci_low is not None else "–"
            seconds = ("cached" if r.cached else _fmt(r.seconds, 1)) if first else ""
            table.add_row(esc(r.task) if first else "", esc(m.metric), esc(m.filter), _fmt(m.value, 3), ci, str(m.n),
                          seconds, _fmt(r.tokens_per_s, 0) if first and not r.cached else "")
    console.print(fit_table(table, console.width, drop=("tokens/s", "seconds", "filter")))
    console.print(f"results: {esc(out_dir)}  (store: {esc(paths.store_path(base))})", highlight=False, soft_wrap=True)
