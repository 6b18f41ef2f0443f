"""Resolving what to evaluate: the request, where each task's YAML and data come from, and one plan
per requested task (its leaves, the paired subset, the shots, a content hash and the cache key)."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain._thinking import DEFAULT_THINK_PATTERNS
from posttrain._versions import package_version
from posttrain.errors import PosttrainError
from posttrain.evaluate._backends import BACKENDS, ModelRef
from posttrain.evaluate._results import cache_key
from posttrain.evaluate._selection import Selection, select
from posttrain.evaluate._tasks import check_task_names, default_task_manager, offline_family, write_offline_tasks
from posttrain.store import dumps

log = logging.getLogger("posttrain.evaluate")

DEFAULT_TASKS = ["mmlu", "gsm8k", "hellaswag"]


def harness_version() -> str:
    return f"lm_eval=={package_version('lm_eval')}"


def backend_version(ref: ModelRef) -> str:
    dist = BACKENDS[ref.kind].version_of
    return f"{ref.backend}/{dist}=={package_version(dist)}"


@dataclass(frozen=True)
class EvalRequest:
    """Everything besides the model that decides what an evaluation computes (and so its cache key)."""

    tasks: tuple[str, ...] = tuple(DEFAULT_TASKS)
    data_dir: Path | None = None
    task_paths: tuple[Path, ...] = ()
    limit: int | None = None
    per_subject: int | None = None
    seed: int = 0
    num_fewshot: int | None = None
    gen_kwargs: dict | None = None
    think_patterns: tuple[str, ...] | None = None  # None: the defaults

    @property
    def patterns(self) -> list[str]:
        return list(self.think_patterns) if self.think_patterns is not None else DEFAULT_THINK_PATTERNS


@dataclass
class TaskSource:
    """Where lm-eval finds the tasks: its TaskManager, and whether every file is local."""

    manager: Any
    offline: bool


def task_source(request: EvalRequest, out_dir: Path) -> TaskSource:
    """The TaskManager for the request: the user's own YAML folders (`task_paths`), offline YAMLs
    written for `data_dir`, or lm-eval's built-in tasks (which read the Hub)."""
    from lm_eval.tasks import TaskManager

    own_paths = [str(Path(p).expanduser()) for p in request.task_paths]
    for p in own_paths:
        if not Path(p).is_dir():
            raise PosttrainError(f"task path {p} is not a directory")
    # Own tasks are indexed without lm-eval's thousands of built-in YAMLs (tens of seconds here).
    own_names = set(TaskManager(include_path=own_paths, include_defaults=False).all_tasks) if own_paths else set()
    builtin = [name for name in request.tasks if name not in own_names]
    if request.data_dir is not None:
        for name in builtin:
            if offline_family(name) is None:
                check_task_names([name])  # an unknown name gets its close matches first
        generated = out_dir / "lm_eval_tasks"
        if builtin:
            write_offline_tasks(builtin, Path(request.data_dir), generated)
        # Generated YAMLs include the official ones by absolute path, so lm-eval need not index its
        # thousands of built-in task files (tens of seconds on a small machine).
        paths = [*own_paths, str(generated)] if builtin else own_paths
        return TaskSource(TaskManager(include_path=paths, include_defaults=False), offline=True)
    if builtin:
        check_task_names(builtin)
        return TaskSource(TaskManager(include_path=own_paths) if own_paths else default_task_manager(), offline=False)
    return TaskSource(TaskManager(include_path=own_paths, include_defaults=False), offline=True)


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


# ---------------------------------------------------------------- one plan per task

def _load_task(tm, name: str, offline: bool) -> dict:
    try:
        return tm.load([name])
    except Exception as e:  # noqa: BLE001 - dataset loading fails in many ways; the remedy is the same
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if offline:
            raise PosttrainError(f"lm-eval could not load task {name!r} from --data-dir: {msg}") from None
        raise PosttrainError(f"lm-eval could not load the data of task {name!r} from the Hugging Face Hub: {msg}",
                             remedy="pass --data-dir DIR with local files in the official layout (see docs/evaluate.md)") from None


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


@dataclass
class TaskPlan:
    """One requested task, resolved: what runs, on which model reference, and the key its result is
    stored under."""

    name: str
    loaded: dict
    ref: ModelRef
    selection: Selection
    n_shot: int
    task_hash: str
    gen_args: dict
    key: str
    groups: dict[str, str] = field(default_factory=dict)

    @property
    def leaves(self) -> dict:
        return self.loaded["tasks"]

    @property
    def top_objects(self) -> list:
        if self.name in self.loaded["groups"]:
            return [self.loaded["groups"][self.name]]
        return list(self.leaves.values())


def _scoring_ref(name: str, ref: ModelRef, generative: bool) -> ModelRef:
    """The model reference that can score this task: Ollama returns no prompt log-probs, so a
    log-likelihood task runs on the GGUF behind the Ollama model, when it can be read."""
    if BACKENDS[ref.kind].loglikelihood or generative:
        return ref
    if ref.loglikelihood is None:
        raise PosttrainError(
            f"task {name!r} needs prompt log-probabilities, which Ollama does not return, and the GGUF "
            f"behind {ref.reference} is not readable on this machine",
            remedy="run posttrain where Ollama's model files are readable, or evaluate the .gguf file directly")
    log.warning("%s: Ollama returns no prompt log-probs; running on its GGUF in llama.cpp", name)
    return ref.loglikelihood


def plan_task(name: str, request: EvalRequest, source: TaskSource, ref: ModelRef) -> TaskPlan:
    loaded = _load_task(source.manager, name, offline=source.offline)
    leaves = loaded["tasks"]
    generating = [t.config.output_type == "generate_until" for t in leaves.values()]
    run_ref = _scoring_ref(name, ref, all(generating))
    selection = select({leaf: len(t.eval_docs) for leaf, t in leaves.items()},
                       limit=request.limit, per_subject=request.per_subject, seed=request.seed)
    first = next(iter(leaves.values()))
    shots = first.get_config("num_fewshot")
    n_shot = request.num_fewshot if request.num_fewshot is not None and shots != 0 else (shots or 0)
    task_hash = _task_hash(leaves, selection)
    # Think patterns only touch generations; the effective list is keyed, so new defaults recompute.
    gen_args = {"gen_kwargs": request.gen_kwargs or None, "think_patterns": request.patterns if any(generating) else None}
    parts = {"model_id": run_ref.model_id, "task": name, "task_hash": task_hash, "n_shot": n_shot,
             "selection": selection.to_json(), "gen_args": gen_args, "harness": harness_version(),
             "backend": backend_version(run_ref)}
    if not run_ref.cacheable:
        parts["uncacheable_run"] = uuid.uuid4().hex
    return TaskPlan(name, loaded, run_ref, selection, n_shot, task_hash, gen_args, cache_key(parts),
                    _group_of(loaded))
