"""One evaluation shard, run wherever an executor puts it: lm-eval on a fixed set of documents.

It reads the model through its `SharedFile` (the node's copy) and its task data from the paths
it was given, writes only to a temporary folder of its own, and returns lm-eval's samples and
results as plain values. The coordinator turns them into items and stores them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from posttrain.evaluate._backends import ModelRef
from posttrain.executors import SharedFile


@dataclass(frozen=True)
class ShardSpec:
    task: str  # the requested task (`mmlu`), as the user named it
    docs: dict[str, list[int]]  # leaf task → document ids (lm-eval's original indices), in order
    ref: ModelRef
    model_file: SharedFile
    data_dir: str | None
    task_paths: tuple[str, ...]
    num_fewshot: int | None
    gen_kwargs: dict | None
    think_patterns: list[str] | None
    label: str

    @property
    def n_docs(self) -> int:
        return sum(len(ids) for ids in self.docs.values())


def _task_manager(spec: ShardSpec, workdir: Path):
    from lm_eval.tasks import TaskManager

    from posttrain.evaluate._tasks import offline_family, write_offline_tasks

    include = list(spec.task_paths)
    if spec.data_dir is not None and offline_family(spec.task) is not None:
        write_offline_tasks([spec.task], Path(spec.data_dir), workdir / "lm_eval_tasks")
        include.append(str(workdir / "lm_eval_tasks"))
    return TaskManager(include_path=include, include_defaults=False) if include else TaskManager()


def _plain(value):
    """lm-eval's configs and samples as JSON values (functions by name), so they travel and unpickle anywhere."""
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(value, default=handle_non_serializable, ensure_ascii=False))


def run_shard(spec: ShardSpec) -> dict:
    if spec.data_dir is not None:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import posttrain.evaluate  # noqa: F401  registers posttrain-llamacpp with lm-eval in this process
    from lm_eval import simple_evaluate

    from posttrain.evaluate._backends import make_lm
    from posttrain.evaluate._measured_lm import MeasuredLM

    started = time.perf_counter()
    local = spec.model_file.local_path()
    fetched_s = time.perf_counter() - started
    ref = replace(spec.ref, model_args={**spec.ref.model_args, "model": str(local)}, gguf=local)
    workdir = Path(tempfile.mkdtemp(prefix="posttrain-shard-"))
    try:
        tm = _task_manager(spec, workdir)
        loaded = tm.load(list(spec.docs))
        lm = MeasuredLM(make_lm(ref), spec.think_patterns)
        res = simple_evaluate(
            model=lm, model_args={"model": spec.label}, tasks=[loaded["tasks"][leaf] for leaf in spec.docs],
            num_fewshot=spec.num_fewshot, samples=dict(spec.docs), gen_kwargs=spec.gen_kwargs,
            log_samples=True, task_manager=tm,
            random_seed=0, numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    keep = ("results", "versions", "n-shot", "higher_is_better", "configs", "n-samples", "config")
    return {**{k: _plain(res.get(k)) for k in keep}, "samples": _plain(res["samples"]),
            "think": dict(lm.think_sha256), "tokens": lm.work_tokens, "n_docs": spec.n_docs,
            "seconds": time.perf_counter() - started, "fetch_seconds": fetched_s}
