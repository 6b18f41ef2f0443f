"""Evaluation in shards: one requested task on one model, split into units an executor runs.

A shard is (model, task, a fixed set of document ids). It returns lm-eval's samples and writes
nothing of the coordinator's; `evaluate()` turns the merged samples into items and stores them as
it does for a local run, so the two give the same items. This plugs into `evaluate(shards=...)`
at two points: the model (`lm`) and lm-eval's entry point (`runner`).

Few-shot prompts: lm-eval draws the examples of a leaf task from one generator advanced document
by document, so splitting a leaf would change its prompts. With few-shot examples a shard is
therefore a whole leaf (an MMLU subject); without, any run of documents.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.evaluate._backends import ModelRef, make_lm
from posttrain.evaluate._measured_lm import MeasuredLM
from posttrain.evaluate._shard_worker import ShardSpec, run_shard
from posttrain.executors import Executor, Unit, make_executor

# Shards are sized to take about a minute: long enough that scheduling and fetching the model are a
# small share, short enough that a lost worker costs little. Seconds per document are a rough guess
# from the model's size (CPU, 4 choices of ~100 tokens); --shard-docs overrides it.
SHARD_SECONDS = 60.0
GIB = 1024 ** 3


def docs_per_shard(model_bytes: int, generative: bool) -> int:
    per_doc = 0.05 + 0.5 * model_bytes / GIB
    if generative:
        per_doc *= 10
    return max(4, int(SHARD_SECONDS / per_doc))


def plan_shards(docs: dict[str, list[int]], size: int, whole_leaves: bool) -> list[dict[str, list[int]]]:
    """Runs of `size` documents in leaf order; with `whole_leaves`, one leaf (or more small ones) each."""
    shards: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {}
    count = 0
    for leaf in sorted(docs):
        ids = list(docs[leaf])
        if whole_leaves:
            if count and count + len(ids) > size:
                shards.append(current)
                current, count = {}, 0
            current[leaf], count = ids, count + len(ids)
            continue
        while ids:
            take = ids[: size - count]
            ids = ids[len(take):]
            current[leaf] = take
            count += len(take)
            if count >= size:
                shards.append(current)
                current, count = {}, 0
    if current:
        shards.append(current)
    return shards


@dataclass
class _ShardedModel:
    """Stands in for the model on the coordinator: the weights load on the workers. Carries what
    `evaluate()` reads from its model (tokens evaluated, hashes of stripped reasoning)."""

    ref: ModelRef
    think_patterns: list[str] | None = None
    work_tokens: int = 0
    think_sha256: dict = field(default_factory=dict)


@dataclass
class ShardedEvaluation:
    """`evaluate(..., shards=ShardedEvaluation(executor, ...))` runs each task as shards on `executor`."""

    executor: Executor
    data_dir: Path | None = None
    task_paths: list[Path] | None = None
    shard_docs: int | None = None
    progress: object = None  # a ShardProgress, or None for none
    stop: object = None  # a threading.Event: once set, outstanding shards are cancelled (`posttrain stop`)
    stats: list[dict] = field(default_factory=list)  # per shard: seconds, fetch seconds, docs, node

    def lm(self, ref: ModelRef, think_patterns: list[str] | None):
        if ref.kind != "gguf" or ref.gguf is None:
            return MeasuredLM(make_lm(ref), think_patterns)  # a server or Ollama: nothing to spread
        return _ShardedModel(ref, think_patterns)

    def runner(self, name: str, leaves: dict, n_shot: int):
        def run(*, model, **kwargs):
            if not isinstance(model, _ShardedModel):
                from lm_eval import simple_evaluate

                return simple_evaluate(model=model, **kwargs)
            return self._run(name, leaves, n_shot, model, kwargs)

        return run

    def _run(self, name: str, leaves: dict, n_shot: int, model: _ShardedModel, kw: dict) -> dict:
        tracker = kw.get("evaluation_tracker")
        if tracker is not None:  # as simple_evaluate does: the coordinator's lm-eval files name the model
            tracker.general_config_tracker.log_experiment_args(
                model_source="CUSTOM", model_args=kw.get("model_args") or "", system_instruction=None,
                chat_template=None, fewshot_as_multiturn=True)
        docs = kw.get("samples") or {leaf: list(range(len(task.eval_docs))) for leaf, task in leaves.items()}
        generative = all(t.config.output_type == "generate_until" for t in leaves.values())
        model_file = self.executor.share(model.ref.gguf, model.ref.model_id)
        size = self.shard_docs or docs_per_shard(model_file.size, generative)
        specs = [ShardSpec(name, part, model.ref, model_file, str(self.data_dir) if self.data_dir else None,
                           tuple(str(p) for p in self.task_paths or ()), kw.get("num_fewshot"),
                           kw.get("gen_kwargs"), model.think_patterns, kw["model_args"]["model"])
                 for part in plan_shards(docs, size, whole_leaves=n_shot > 0)]
        units = [Unit(f"{name} shard {i + 1}/{len(specs)} of {model.ref.label}", run_shard, (spec,))
                 for i, spec in enumerate(specs)]
        outputs = []
        if self.progress is not None:
            self.progress.add(len(units))
        for done in self.executor.run(units, stop=self.stop):
            outputs.append(done.value)
            self.stats.append({"task": name, "docs": done.value["n_docs"], "seconds": done.value["seconds"],
                               "fetch_seconds": done.value["fetch_seconds"], "node": done.node,
                               "finished": time.time()})
            if self.progress is not None:
                self.progress.advance(done.value["n_docs"], self.executor.nodes_in_use())
        for out in outputs:
            model.work_tokens += out["tokens"] or 0
            model.think_sha256.update(out["think"])
        from posttrain.evaluate._shard_merge import merge_outputs

        return merge_outputs(name, leaves, docs, outputs)


@contextmanager
def sharded(executor: str | None = "local", *, ray_address: str | None = None, shared_dir: Path | None = None,
            data_dir: Path | None = None, task_paths: list[Path] | None = None, shard_docs: int | None = None,
            progress: bool = True, stop=None) -> Iterator[ShardedEvaluation | None]:
    """What to pass as `evaluate(shards=...)`: None for the local executor without a shard size (today's
    path, one lm-eval run per task in this process), else shards on the chosen executor, with a
    progress bar. The executor (a private Ray cluster) ends with the block; Ctrl-C inside it cancels
    the cluster's tasks, and so does `stop` (a threading.Event) once set: the evaluation then raises
    `WorkInterrupted` and stores nothing of the task in progress."""
    if (executor or "local") == "local" and not ray_address and shard_docs is None:
        yield None
        return
    from posttrain.evaluate._shard_progress import ShardProgress

    with make_executor(executor, ray_address=ray_address, shared_dir=shared_dir) as ex:
        bar = ShardProgress() if progress else nullcontext()
        with bar:
            yield ShardedEvaluation(ex, data_dir=data_dir, task_paths=task_paths, shard_docs=shard_docs,
                                    progress=bar if progress else None, stop=stop)
