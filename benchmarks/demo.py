"""Wall time of the demo, stage by stage, and the margin it shows.

    python benchmarks/demo.py [--workdir DIR] [--steps N] [--threads N] [--components]

By default it runs the real demo (`posttrain.demo.run_demo`: watcher daemon, Trainer with the
callback, the pipeline's run) and prints the demo's stages and the pipeline's steps as the store
recorded them (wall time, peak RSS). With --components it runs the same stages with posttrain's
components directly, one after another, in this process:
write the task → train (Trainer, CPU) → convert the baseline (early checkpoint) to F16 and the
final model to F16/Q8_0/Q4_K_M → evaluate the four GGUF files in-process (lm-eval,
`posttrain-llamacpp`) → compare each variant with the baseline (posttrain.compare: exact McNemar,
Holm). Prints a table of seconds per stage, the accuracies and the verdicts. The target for the
whole demo is under 5 minutes on 2 CPU cores with nothing else running; compare figures only
between runs on the same, equally loaded machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _items(samples: list[dict], task: str):
    # No cluster: like the pipeline (the demo task has no subjects), so compare uses exact McNemar.
    from posttrain.compare import ItemResult

    return [ItemResult(task=task, group=None, doc_id=s["doc_id"], doc_hash=s["doc_hash"], filter=s["filter"],
                       metric="acc", value=float(s["acc"]), cluster=None, question=s["doc"]["question"],
                       target=s["doc"]["answer"]) for s in samples]


def full_demo(ns) -> int:
    from posttrain.demo import run_demo
    from posttrain.demo._train import DEFAULT_STEPS
    from posttrain.store import Store

    work = ns.workdir or Path(tempfile.mkdtemp(prefix="posttrain-demo-bench-")) / "demo"
    load_before = os.getloadavg()[0]
    result = run_demo(work, steps=ns.steps or DEFAULT_STEPS, threads=ns.threads, say=lambda line: None)
    print(f"{'stage':<28} {'seconds':>8}")
    for name, seconds in result.stage_seconds.items():
        if name != "total":
            print(f"{name:<28} {seconds:8.1f}")
    store = Store(result.workdir / "home" / "posttrain.db")
    try:
        for row in store.query("SELECT name, status, wall_s, peak_rss_bytes FROM steps WHERE run_id=? "
                               "ORDER BY started_at", (result.run_id,)):
            rss = f"{row['peak_rss_bytes'] / 1e6:6.0f} MB" if row["peak_rss_bytes"] else ""
            print(f"  pipeline {row['name']:<19} {row['wall_s'] or 0:8.1f}  {row['status']:<9} {rss}")
    finally:
        store.close()
    print(f"{'total':<28} {result.stage_seconds['total']:8.1f}   (load average {load_before:.1f} → "
          f"{os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")
    for sentence in result.verdicts:
        print(f"  {sentence}")
    print(f"report: {result.report}")
    return 0 if result.status == "succeeded" else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--components", action="store_true", help="stages by hand, without watcher and pipeline")
    ns = parser.parse_args()
    if not ns.components:
        sys.exit(full_demo(ns))

    import lm_eval
    from lm_eval.tasks import TaskManager

    import posttrain.evaluate  # noqa: F401  registers posttrain-llamacpp
    from posttrain.compare import compare_items
    from posttrain.convert import convert_checkpoint
    from posttrain.demo import TASK_NAME, train_demo_model, write_demo_task
    from posttrain.demo._train import DEFAULT_STEPS

    work = ns.workdir or Path(tempfile.mkdtemp(prefix="posttrain-demo-bench-"))
    times: dict[str, float] = {}

    def stage(name: str, fn):
        start = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - start
        print(f"{name:<28} {times[name]:7.1f} s", flush=True)
        return out

    load_before = os.getloadavg()[0]
    task = stage("write task", lambda: write_demo_task(work / "task"))
    ck = stage("train", lambda: train_demo_model(work / "train", steps=ns.steps or DEFAULT_STEPS, threads=ns.threads))
    base = stage("convert baseline (F16)", lambda: convert_checkpoint(ck.early, work / "gguf-baseline", ["f16"]))
    final = stage("convert final (3 variants)",
                  lambda: convert_checkpoint(ck.final, work / "gguf-final", ["f16", "q8_0", "q4_k_m"]))
    tm = TaskManager(include_path=task.include_path)

    def evaluate(path: Path):
        res = lm_eval.simple_evaluate(model="posttrain-llamacpp", model_args=f"model={path}", tasks=[TASK_NAME],
                                      task_manager=tm, log_samples=True)
        return _items(res["samples"][TASK_NAME], TASK_NAME)

    baseline_items = stage("evaluate baseline", lambda: evaluate(base.variants[0].path))
    results = {}
    for v in final.variants:
        results[v.quant] = stage(f"evaluate {v.quant}", lambda v=v: evaluate(v.path))
    docs = stage("compare", lambda: {q: compare_items(items, baseline_items, new_label=f"final-{q}",
                                                      baseline_label="early-F16") for q, items in results.items()})
    total = sum(times.values())
    print(f"{'total':<28} {total:7.1f} s   (load average {load_before:.1f} → {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} CPUs, {ck.steps} steps)")
    for q, doc in docs.items():
        c = doc["comparisons"][0]
        print(f"{q:<8} acc {c['new']['mean']:.3f} vs baseline {c['baseline']['mean']:.3f}  "
              f"p={c['test']['p_value']:.2g}  {c['verdict']}: {c['sentence']}")
    print(f"work directory: {work}")
    sys.exit(0 if all(d["comparisons"][0]["verdict"] == "better" for d in docs.values()) else 1)


if __name__ == "__main__":
    main()
