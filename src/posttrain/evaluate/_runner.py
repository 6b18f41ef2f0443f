"""`evaluate()`: lm-eval tasks on one model, with offline data, paired subsets, storage and cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from posttrain.errors import PosttrainError
from posttrain.evaluate._backends import BACKENDS, ModelRef, make_lm, resolve_model, with_gpu_layers, with_lora
from posttrain.evaluate._results import (
    EvalResult,
    cache_key,
    find_cached,
    metrics_from_items,
    metrics_from_json,
    metrics_to_json,
    save_eval,
)
from posttrain.evaluate._selection import Selection, select
from posttrain.evaluate._tasks import (
    check_task_names,
    default_task_manager,
    offline_family,
    write_offline_tasks,
)
from posttrain._thinking import DEFAULT_THINK_PATTERNS
from posttrain.evaluate._measured_lm import MeasuredLM, request_key
from posttrain.store import Store, dumps

log = logging.getLogger(__name__)

DEFAULT_TASKS = ["mmlu", "gsm8k", "hellaswag"]
QUESTION_CHARS = 400
TEXT_CHARS = 2000


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def harness_version() -> str:
    return f"lm_eval=={_version('lm_eval')}"


def _backend_version(ref: ModelRef) -> str:
    dist = BACKENDS[ref.kind].version_of
    return f"{ref.backend}/{dist}=={_version(dist)}"


def _environment() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(),
            **{d: _version(d) for d in ("posttrain", "lm_eval", "llama_cpp_python", "transformers", "torch",
                                         "datasets", "ollama")}}


# ---------------------------------------------------------------- task content hash

def _doc_hash(doc) -> str:
    from lm_eval.utils import handle_non_serializable, hash_string

    # The same rendering lm-eval uses for the samples' doc_hash, so items can be matched to its logs.
    return hash_string(json.dumps(doc, indent=2, default=handle_non_serializable, ensure_ascii=False))


_WHERE_KEYS = ("dataset_path", "dataset_name", "dataset_kwargs")


def _stable(obj):
    """Config values as stable text: a function (`!function utils.process_docs`) by its qualified name,
    never by its repr, which carries a memory address that changes every run."""
    if isinstance(obj, dict):
        return {str(k): _stable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_stable(v) for v in obj]
    if callable(obj):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    return obj


def _task_hash(leaves: dict, selection: Selection) -> str:
    """A hash of what the tasks ARE (config and documents), not where their files live."""
    h = hashlib.sha256()
    for name in sorted(leaves):
        task = leaves[name]
        cfg = {k: v for k, v in task.dump_config().items() if k not in _WHERE_KEYS}
        meta = dict(cfg.get("metadata") or {})
        meta.pop("config_source", None)
        cfg["metadata"] = meta
        h.update(dumps({"task": name, "config": _stable(cfg)}).encode())
        docs = list(task.eval_docs)
        chosen = selection.indices[name] if selection.indices is not None else range(len(docs))
        for i in chosen:
            h.update(_doc_hash(docs[i]).encode())
        fewshot = task.fewshot_docs()
        if fewshot is not None:
            for doc in fewshot:
                h.update(_doc_hash(doc).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- lm-eval samples → item rows

def _short(text, limit: int) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _items_from_samples(leaf: str, task, samples: list[dict], *, group: str | None, selection: Selection,
                        think: dict[str, str]) -> list[dict]:
    metric_names = [m["metric"] for m in task.config.metric_list or []] or list(task._metric_fn_list)
    multiple_choice = task.config.output_type == "multiple_choice"
    rows = []
    for s in samples:
        doc = s["doc"]
        try:
            question = task.doc_to_text(doc)
        except Exception:  # noqa: BLE001 - a display string only
            question = None
        if not isinstance(question, str):
            question = doc.get("question") if isinstance(doc, dict) else None
        choice_ll = None
        target = s.get("target")
        response = s.get("filtered_resps")
        think_sha = None
        if multiple_choice:
            choices = task.doc_to_choice(doc)
            lls = [float(r[0]) for r in s["filtered_resps"]]
            choice_ll = json.dumps(lls)
            response = choices[max(range(len(lls)), key=lls.__getitem__)] if lls else None
            gold = task.doc_to_target(doc)
            if isinstance(gold, int) and 0 <= gold < len(choices):
                target = choices[gold]
        else:
            if isinstance(response, list):
                response = response[0] if response else None
            args = s.get("arguments")
            if isinstance(args, dict):  # lm-eval logs {"gen_args_0": {"arg_0": context, "arg_1": kwargs}}
                first = next(iter(args.values()), {})
                think_sha = think.get(request_key((first.get("arg_0"), first.get("arg_1"))))
            elif isinstance(args, list) and args:
                think_sha = think.get(request_key(tuple(args[0])))
        cluster = leaf if group else (doc.get("activity_label") if isinstance(doc, dict) else None)
        for metric in metric_names:
            if metric not in s:
                continue
            value = s[metric]
            rows.append({
                "task": leaf, "task_group": group,
                "doc_id": int(s["doc_id"]),  # lm-eval logs the original index
                "doc_hash": s.get("doc_hash"), "filter": s.get("filter", "none"), "metric": metric,
                "value": float(value) if isinstance(value, int | float | bool) else None,
                "choice_ll_json": choice_ll, "question": _short(question, QUESTION_CHARS),
                "target": _short(target, TEXT_CHARS), "response": _short(response, TEXT_CHARS),
                "cluster": cluster, "think_sha256": think_sha,
            })
    return rows


# ---------------------------------------------------------------- the entry point

def _load_task(tm, name: str, offline: bool) -> dict:
    try:
        return tm.load([name])
    except Exception as e:  # noqa: BLE001 - dataset loading fails in many ways; the remedy is the same
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if offline:
            raise PosttrainError(f"lm-eval could not load task {name!r} from --data-dir: {msg}") from None
        raise PosttrainError(f"lm-eval could not load the data of task {name!r} from the Hugging Face Hub: {msg}",
                             remedy="pass --data-dir DIR with local files in the official layout (see docs/evaluate.md)") from None


def _top_objects(loaded: dict, name: str) -> list:
    if name in loaded["groups"]:
        return [loaded["groups"][name]]
    return list(loaded["tasks"].values())


def _group_of(loaded: dict) -> dict[str, str]:
    """Leaf → the top-level group it is reported under."""
    parents = {child: g for g, children in loaded.get("group_map", {}).items() for child in children}
    out = {}
    for leaf in loaded["tasks"]:
        node, top = leaf, None
        while node in parents:
            node = top = parents[node]
        if top:
            out[leaf] = top
    return out


def _save_lm_eval_files(tracker, runs: list[tuple[dict, dict]]) -> None:
    merged: dict = {}
    samples: dict = {}
    for res, task_samples in runs:
        for key, value in res.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged.setdefault(key, value)
        samples.update(task_samples)
    tracker.save_results_aggregated(results=merged, samples=samples)
    for leaf in merged.get("configs", {}):
        if leaf in samples:
            tracker.save_results_samples(task_name=leaf, samples=samples[leaf])


def evaluate(model: str | Path, tasks: list[str], *, data_dir: Path | None = None, limit: int | None = None,
             per_subject: int | None = None, seed: int = 0, num_fewshot: int | None = None, store: Store,
             out_dir: Path, endpoint: str | None = None, tokenizer: Path | None = None,
             ollama_url: str | None = None, think_patterns: list[str] | None = None,
             gen_kwargs: dict | None = None, label: str | None = None,
             task_paths: list[Path] | None = None, n_gpu_layers: int | None = None,
             lora: Path | None = None) -> list[EvalResult]:
    """Evaluate one model on lm-eval tasks; one EvalResult per task, reused from the store when the key matches.

    `task_paths`: directories of your own lm-eval task YAMLs (lm-eval's `--include_path`); tasks found
    there are loaded from them, the others from lm-eval (or `data_dir`) as usual. `n_gpu_layers`:
    layers llama.cpp offloads for a GGUF (default: all on a build that offloads, else none).
    `lora`: a GGUF LoRA that llama.cpp applies to `model` (a GGUF) at run time.
    """
    if data_dir is not None:
        # Everything is local: keep `datasets`/`huggingface_hub` from trying (and timing out on) the Hub.
        # Read when those libraries are first imported, which is below.
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    tasks = list(tasks or DEFAULT_TASKS)
    out_dir = Path(out_dir)
    ref = with_gpu_layers(resolve_model(model, endpoint=endpoint, tokenizer=tokenizer, ollama_url=ollama_url),
                          n_gpu_layers)
    ref = with_lora(ref, lora)
    include = None
    own_paths = [str(Path(p).expanduser()) for p in task_paths or []]
    for p in own_paths:
        if not Path(p).is_dir():
            raise PosttrainError(f"task path {p} is not a directory")
    # Own tasks are indexed without lm-eval's thousands of built-in YAMLs (tens of seconds here).
    own_names = set(TaskManager(include_path=own_paths, include_defaults=False).all_tasks) if own_paths else set()
    builtin = [name for name in tasks if name not in own_names]
    if data_dir is not None:
        for name in builtin:
            if offline_family(name) is None:
                check_task_names([name])  # an unknown name gets its close matches first
        if builtin:
            write_offline_tasks(builtin, Path(data_dir), out_dir / "lm_eval_tasks")
        include = str(out_dir / "lm_eval_tasks")
        # Generated YAMLs include the official ones by absolute path, so lm-eval need not index its
        # thousands of built-in task files (tens of seconds on a small machine).
        tm = TaskManager(include_path=[*own_paths, include] if builtin else own_paths, include_defaults=False)
    elif builtin:
        check_task_names(builtin)
        tm = TaskManager(include_path=own_paths) if own_paths else default_task_manager()
    else:
        include = own_paths[0]
        tm = TaskManager(include_path=own_paths, include_defaults=False)
    lms: dict[tuple[str, str], MeasuredLM] = {}
    results: list[EvalResult] = []
    runs: list[tuple[dict, dict]] = []
    tracker = None
    try:
        for name in tasks:
            loaded = _load_task(tm, name, offline=include is not None)
            leaves = loaded["tasks"]
            groups = _group_of(loaded)
            generative = all(t.config.output_type == "generate_until" for t in leaves.values())
            run_ref = ref
            if not BACKENDS[ref.kind].loglikelihood and not generative:
                if ref.loglikelihood is None:
                    raise PosttrainError(
                        f"task {name!r} needs prompt log-probabilities, which Ollama does not return, and the GGUF "
                        f"behind {ref.reference} is not readable on this machine",
                        remedy="run posttrain where Ollama's model files are readable, or evaluate the .gguf file directly")
                log.warning("%s: Ollama returns no prompt log-probs; running on its GGUF in llama.cpp", name)
                run_ref = ref.loglikelihood
            selection = select({leaf: len(t.eval_docs) for leaf, t in leaves.items()},
                               limit=limit, per_subject=per_subject, seed=seed)
            first = next(iter(leaves.values()))
            n_shot = num_fewshot if num_fewshot is not None and first.get_config("num_fewshot") != 0 \
                else (first.get_config("num_fewshot") or 0)
            task_hash = _task_hash(leaves, selection)
            # Think patterns only touch generations; the effective list is keyed, so new defaults recompute.
            patterns = list(think_patterns) if think_patterns is not None else DEFAULT_THINK_PATTERNS
            gen_args = {"gen_kwargs": gen_kwargs or None,
                        "think_patterns": patterns if any(t.config.output_type == "generate_until"
                                                          for t in leaves.values()) else None}
            parts = {"model_id": run_ref.model_id, "task": name, "task_hash": task_hash, "n_shot": n_shot,
                     "selection": selection.to_json(), "gen_args": gen_args, "harness": harness_version(),
                     "backend": _backend_version(run_ref)}
            if not run_ref.cacheable:
                parts["uncacheable_run"] = uuid.uuid4().hex
            key = cache_key(parts)
            row = find_cached(store, key)
            if row is not None:
                agg = json.loads(row["aggregates_json"])
                results.append(EvalResult(name, metrics_from_json(agg["metrics"]), row["n_items"], row["seconds"],
                                          row["tokens"], row["id"], True, row["model_id"], row["backend"],
                                          row["output_dir"]))
                continue

            lm_key = (run_ref.backend, run_ref.reference)
            if lm_key not in lms:
                lms[lm_key] = MeasuredLM(make_lm(run_ref), think_patterns)
            lm = lms[lm_key]
            tokens_before = lm.work_tokens
            lm.think_sha256.clear()
            run_label = label or run_ref.label
            tracker = tracker or EvaluationTracker(output_path=str(out_dir / "lm_eval"))
            started = time.perf_counter()
            res = simple_evaluate(
                model=lm, model_args={"model": run_label}, tasks=_top_objects(loaded, name),
                num_fewshot=num_fewshot, samples=selection.indices, gen_kwargs=gen_kwargs or None,
                log_samples=True, evaluation_tracker=tracker, task_manager=tm,
                random_seed=0, numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234,
            )
            seconds = time.perf_counter() - started
            samples = res.pop("samples")
            runs.append((res, samples))
            items = []
            for leaf, task in leaves.items():
                items += _items_from_samples(leaf, task, samples.get(leaf, []), group=groups.get(leaf),
                                             selection=selection, think=lm.think_sha256)
            aggregates = res["results"].get(name) or (res["results"].get(first.config.task) if len(leaves) == 1 else {})
            metrics = metrics_from_items(items, aggregates or {})
            n_docs = len({(i["task"], i["doc_id"]) for i in items})
            tokens = (lm.work_tokens - tokens_before) or None
            output_dir = str(out_dir / "lm_eval" / tracker.general_config_tracker.model_name_sanitized)
            eval_id = save_eval(store, key=key, items=items, record={
                "model_id": run_ref.model_id, "backend": run_ref.backend, "task": name, "task_hash": task_hash,
                "task_version": dumps({leaf: res.get("versions", {}).get(leaf) for leaf in leaves}),
                "n_shot": n_shot, "selection_json": dumps(selection.to_json()), "gen_args_json": dumps(gen_args),
                "harness_version": harness_version(),
                "aggregates_json": dumps({"metrics": metrics_to_json(metrics), "lm_eval": res["results"].get(name),
                                          "reference": run_ref.reference, "label": run_label}),
                "env_json": dumps(_environment()), "seconds": seconds, "tokens": tokens, "n_items": n_docs,
                "output_dir": output_dir,
            })
            results.append(EvalResult(name, metrics, n_docs, seconds, tokens, eval_id, False, run_ref.model_id,
                                      run_ref.backend, output_dir))
    finally:
        # One lm-eval run folder per call (one date id for all tasks), as `lm_eval` itself writes
        # it, so tools that read the newest run of a folder see every task; written even when a later
        # task failed, for the tasks that finished.
        if tracker is not None and runs:
            _save_lm_eval_files(tracker, runs)
    return results

