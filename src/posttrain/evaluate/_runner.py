"""`evaluate()`: lm-eval tasks on one model. Per task: plan it (`_task_plan`), reuse its stored result
when the cache key matches, else run lm-eval and store the items and aggregates."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from posttrain import _progress, llamacpp
from posttrain._versions import package_version
from posttrain.evaluate._backends import ModelRef, make_lm, resolve_model, with_gpu_layers, with_lora
from posttrain.evaluate._lm_eval_files import remove_abandoned_staging, save_lm_eval_files
from posttrain.evaluate._measured_lm import MeasuredLM
from posttrain.evaluate._results import EvalResult, metrics_from_items, metrics_from_json, metrics_to_json
from posttrain.evaluate._samples import items_from_samples
from posttrain.evaluate._selection import check_subset_options
from posttrain.evaluate._task_plan import (
    DEFAULT_TASKS,
    EvalRequest,
    TaskPlan,
    harness_version,
    plan_task,
    task_source,
)
from posttrain.store import Store, dumps


def _environment() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(),
            **{d: package_version(d) for d in ("posttrain", "lm_eval", "llama_cpp_python", "transformers", "torch",
                                                "datasets", "ollama")}}


def _cached(store: Store, plan: TaskPlan) -> EvalResult | None:
    row = store.evals.by_key(plan.key)
    if row is None:
        return None
    agg = json.loads(row["aggregates_json"])
    return EvalResult(plan.name, metrics_from_json(agg["metrics"]), row["n_items"], row["seconds"], row["tokens"],
                      row["id"], True, row["model_id"], row["backend"], row["output_dir"])


class _Session:
    """What the tasks of one `evaluate()` call share: the loaded models, lm-eval's tracker and the
    runs to write as one lm-eval output folder."""

    def __init__(self, request: EvalRequest, out_dir: Path, label: str | None, source, shards=None):
        from lm_eval.loggers import EvaluationTracker

        self.request, self.out_dir, self.label, self.source = request, out_dir, label, source
        self.shards = shards  # a ShardedEvaluation (evaluate/_shards.py), or None: in this process
        self.lms: dict[tuple[str, str], MeasuredLM] = {}
        self.tracker = EvaluationTracker(output_path=str(out_dir / "lm_eval"))
        self.runs: list[tuple[dict, dict]] = []

    def lm(self, ref: ModelRef) -> MeasuredLM:
        key = (ref.backend, ref.reference)
        if key not in self.lms:
            patterns = list(self.request.think_patterns) if self.request.think_patterns is not None else None
            self.lms[key] = (self.shards.lm(ref, patterns) if self.shards is not None
                             else MeasuredLM(make_lm(ref), patterns))
        return self.lms[key]

    def run(self, plan: TaskPlan, store: Store) -> EvalResult:
        """lm-eval on the plan's subset, then its items and aggregates stored under the plan's key."""
        from lm_eval import simple_evaluate

        lm = self.lm(plan.ref)
        tokens_before = lm.work_tokens
        lm.think_sha256.clear()
        label = self.label or plan.ref.label
        gen_kwargs = self.request.gen_kwargs or None
        started = time.perf_counter()
        run_lm_eval = (self.shards.runner(plan.name, plan.leaves, plan.n_shot) if self.shards is not None
                       else simple_evaluate)
        res = run_lm_eval(
            model=lm, model_args={"model": label}, tasks=plan.top_objects, num_fewshot=self.request.num_fewshot,
            samples=plan.selection.indices, gen_kwargs=gen_kwargs, log_samples=True,
            evaluation_tracker=self.tracker, task_manager=self.source.manager,
            random_seed=0, numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234,
        )
        seconds = time.perf_counter() - started
        samples = res.pop("samples")
        self.runs.append((res, samples))
        items = []
        for leaf, task in plan.leaves.items():
            items += items_from_samples(leaf, task, samples.get(leaf, []), group=plan.groups.get(leaf),
                                        think=lm.think_sha256)
        first = next(iter(plan.leaves.values()))
        aggregates = res["results"].get(plan.name) or (
            res["results"].get(first.config.task) if len(plan.leaves) == 1 else {})
        metrics = metrics_from_items(items, aggregates or {})
        n_docs = len({(i.task, i.doc_id) for i in items})
        tokens = (lm.work_tokens - tokens_before) or None
        output_dir = str(self.out_dir / "lm_eval" / self.tracker.general_config_tracker.model_name_sanitized)
        eval_id = store.evals.save(plan.key, items=items, record={
            "model_id": plan.ref.model_id, "backend": plan.ref.backend, "task": plan.name, "task_hash": plan.task_hash,
            "task_version": dumps({leaf: res.get("versions", {}).get(leaf) for leaf in plan.leaves}),
            "n_shot": plan.n_shot, "selection_json": dumps(plan.selection.to_json()),
            "gen_args_json": dumps(plan.gen_args), "harness_version": harness_version(),
            "aggregates_json": dumps({"metrics": metrics_to_json(metrics), "lm_eval": res["results"].get(plan.name),
                                      "reference": plan.ref.reference, "label": label}),
            "env_json": dumps(_environment()), "seconds": seconds, "tokens": tokens, "n_items": n_docs,
            "output_dir": output_dir,
        })
        return EvalResult(plan.name, metrics, n_docs, seconds, tokens, eval_id, False, plan.ref.model_id,
                          plan.ref.backend, output_dir)

    def close(self) -> None:
        # One lm-eval run folder per call (one date id for all tasks), as `lm_eval` itself writes
        # it, so tools that read the newest run of a folder see every task; written even when a later
        # task failed, for the tasks that finished.
        if self.runs:
            save_lm_eval_files(self.tracker, self.runs, self.out_dir / "lm_eval")


def evaluate(model: str | Path, tasks: list[str], *, data_dir: Path | None = None, limit: int | None = None,
             per_subject: int | None = None, seed: int = 0, num_fewshot: int | None = None, store: Store,
             out_dir: Path, endpoint: str | None = None, tokenizer: Path | None = None,
             ollama_url: str | None = None, think_patterns: list[str] | None = None,
             gen_kwargs: dict | None = None, label: str | None = None,
             task_paths: list[Path] | None = None, n_gpu_layers: int | None = None,
             shards=None, lora: Path | None = None) -> list[EvalResult]:
    """Evaluate one model on lm-eval tasks; one EvalResult per task, reused from the store when the key matches.

    `task_paths`: directories of your own lm-eval task YAMLs (lm-eval's `--include_path`); tasks found
    there are loaded from them, the others from lm-eval (or `data_dir`) as usual. `n_gpu_layers`:
    layers llama.cpp offloads for a GGUF (default: all on a build that offloads, else none).
    `shards`: a `ShardedEvaluation` (evaluate/_shards.py) that runs each task as shards on an executor.
    `lora`: a GGUF LoRA that llama.cpp applies to `model` (a GGUF) at run time.
    """
    check_subset_options(limit, per_subject)  # before any task or data is loaded
    request = EvalRequest(tasks=tuple(tasks or DEFAULT_TASKS), data_dir=data_dir,
                          task_paths=tuple(Path(p) for p in task_paths or ()), limit=limit, per_subject=per_subject,
                          seed=seed, num_fewshot=num_fewshot, gen_kwargs=gen_kwargs,
                          think_patterns=tuple(think_patterns) if think_patterns is not None else None)
    ref = with_gpu_layers(resolve_model(model, endpoint=endpoint, tokenizer=tokenizer, ollama_url=ollama_url),
                          n_gpu_layers)
    ref = with_lora(ref, lora)
    return evaluate_request(ref, request, store=store, out_dir=Path(out_dir), label=label, shards=shards)


def plan_uses_llamacpp(ref: ModelRef) -> bool:
    """Whether this model is scored by llama.cpp in process (a GGUF, or Ollama's log-likelihood route)."""
    return ref.kind == "gguf" or (ref.loglikelihood is not None and ref.loglikelihood.kind == "gguf")


def evaluate_request(ref: ModelRef, request: EvalRequest, *, store: Store, out_dir: Path,
                     label: str | None = None, shards=None) -> list[EvalResult]:
    """Each task of the request: its stored result when the cache key matches, else run and stored."""
    if request.data_dir is not None:
        # Everything is local: keep `datasets`/`huggingface_hub` from trying (and timing out on) the Hub.
        # Read when those libraries are first imported, which is below.
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = task_source(request, out_dir)
    remove_abandoned_staging(out_dir)  # a save killed midway, whose rerun may find every task cached
    session: _Session | None = None
    results: list[EvalResult] = []
    try:
        for name in request.tasks:
            _progress.begin(name, unit="requests")  # the CLI's display, when there is one
            plan = plan_task(name, request, source, ref)
            cached = _cached(store, plan)
            if cached is not None:
                results.append(cached)
                _progress.end(f"n={cached.n}, cached")
                continue
            if session is None and plan_uses_llamacpp(ref):
                # Measured once per CPU and llama.cpp build, before the first model is loaded, so
                # that every load (here, in shards, in step children) finds it and this wait is named
                # as a stage of its own; the task's stage comes back after it.
                with _progress.aside(then=name, unit="requests") as say:
                    llamacpp.ensure_profile(say=say)
            session = session or _Session(request, out_dir, label, source, shards)
            results.append(session.run(plan, store))
            _progress.end(f"n={results[-1].n}")
    finally:
        if session is not None:
            session.close()
    return results
