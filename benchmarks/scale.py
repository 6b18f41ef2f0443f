"""Evaluation shards on Ray: per-shard time and overhead against the local run of the same items,
and a projection of wall time for 1/4/16/64 nodes on full MMLU + HellaSwag for a 1B and an 8B model.

    python benchmarks/scale.py [--model M.gguf] [--limit 40] [--shard-docs 10] [--data-dir DIR]

Without --model a tiny random Llama is made (seconds). The same selection is evaluated twice: on
today's local path, then as shards on a private one-CPU Ray cluster (so shards run one at a time
and every second beyond the local run is overhead). This machine has 2 shared cores, so no
speed-up can be shown here; the projection uses the measured per-shard overhead and the
assumptions it prints.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
FULL_DOCS = {"mmlu": 14042, "hellaswag": 10042}
# Assumed per-node prompt throughput (llama.cpp, Q4_K_M, one 16-core CPU node) and GGUF sizes.
MODELS = {"1B": {"tokens_per_s": 400.0, "gguf_gib": 0.8}, "8B": {"tokens_per_s": 50.0, "gguf_gib": 4.9}}
NETWORK_GIB_S = 1.0  # object-store transfer to a node (10 GbE, roughly)
SHARD_S = 60.0


def _model(arg: Path | None, work: Path) -> Path:
    if arg is not None:
        return arg
    from posttrain.convert import convert_checkpoint
    from posttrain.tiny import make_tiny

    result = convert_checkpoint(make_tiny(work / "tiny", tokenizer="spm"), work / "gguf", ["q8_0"])
    return next(v.path for v in result.variants if v.quant == "Q8_0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--tasks", default="hellaswag", help="comma-separated; mmlu needs --limit 57 or more")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--shard-docs", type=int, default=10)
    args = ap.parse_args()

    from posttrain.evaluate import ShardedEvaluation, evaluate
    from posttrain.executors._ray import RayExecutor
    from posttrain.store import Store

    tasks = args.tasks.split(",")
    with tempfile.TemporaryDirectory(prefix="posttrain-scale-") as tmp:
        work = Path(tmp)
        model = _model(args.model, work)
        model_mib = model.stat().st_size / 2**20
        kw = dict(data_dir=args.data_dir, limit=args.limit, out_dir=work / "out")
        t = time.perf_counter()
        local = evaluate(model, tasks, store=Store(work / "local.db"), **kw)
        local_s = time.perf_counter() - t
        docs = sum(r.n for r in local)
        tokens = sum(r.tokens or 0 for r in local)

        t = time.perf_counter()
        ex = RayExecutor(None, num_cpus=1)
        start_s = time.perf_counter() - t
        try:
            shards = ShardedEvaluation(ex, data_dir=args.data_dir, shard_docs=args.shard_docs)
            t = time.perf_counter()
            evaluate(model, tasks, store=Store(work / "ray.db"), shards=shards, **kw)
            ray_s = time.perf_counter() - t
        finally:
            ex.close()
    stats = shards.stats
    n = len(stats)
    per_doc_local = local_s / docs
    inside = [s["seconds"] for s in stats]
    fixed = [s["seconds"] - s["docs"] * per_doc_local for s in stats]  # lm-eval import, task load, model load
    sched = (ray_s - sum(inside)) / n  # between shards: Ray scheduling, worker start, result transfer, merge
    print(f"model: {model.name} ({model_mib:.1f} MiB); tasks {args.tasks}, --limit {args.limit}: "
          f"{docs} docs, {tokens} tokens")
    print(f"local run (today's path):       {local_s:7.1f} s  ({per_doc_local * 1000:.0f} ms/doc)")
    print(f"private Ray cluster start:      {start_s:7.1f} s  (once per command)")
    print(f"sharded run, 1 CPU, {n} shards:  {ray_s:7.1f} s  ({args.shard_docs} docs/shard)")
    print(f"  per shard, inside the worker: median {statistics.median(inside):.2f} s "
          f"(min {min(inside):.2f}, max {max(inside):.2f})")
    print(f"  fixed cost per shard (worker time minus its docs at the local rate): median {statistics.median(fixed):.2f} s")
    print(f"  scheduling + transfer + merge per shard: {sched:.2f} s")
    vs_local = (ray_s - local_s) / n  # everything a shard costs beyond the local run: the figure projected with
    print(f"  overhead per shard against the local run ((sharded - local) / shards): {vs_local:.2f} s")
    print(f"  model fetch per node (object store, sha256, cache): "
          f"{max(s['fetch_seconds'] for s in stats):.3f} s first, {min(s['fetch_seconds'] for s in stats):.4f} s cached")
    overhead = max(vs_local, 0.0)
    tokens_per_doc = tokens / docs if docs else 0
    print("\nprojection: full MMLU (14,042) + HellaSwag (10,042) = 24,084 docs, shards of ~60 s of model work")
    print(f"assumptions: {tokens_per_doc:.0f} tokens/doc (measured here); per node "
          + ", ".join(f"{k}: {v['tokens_per_s']:.0f} tokens/s, {v['gguf_gib']} GiB GGUF" for k, v in MODELS.items())
          + f"; {NETWORK_GIB_S} GiB/s to fetch the model once per node; per-shard overhead {overhead:.1f} s "
          "(measured above, against the local run); shards spread evenly; one shard per node at a time; no stragglers")
    print(f"{'model':>6} {'shards':>7} " + " ".join(f"{f'{k} node(s)':>12}" for k in (1, 4, 16, 64)))
    for name, m in MODELS.items():
        s_per_doc = tokens_per_doc / m["tokens_per_s"]
        total_docs = sum(FULL_DOCS.values())
        per_shard_docs = max(1, int(SHARD_S / s_per_doc))
        n_shards = math.ceil(total_docs / per_shard_docs)
        cells = []
        for nodes in (1, 4, 16, 64):
            wall = m["gguf_gib"] / NETWORK_GIB_S + math.ceil(n_shards / nodes) * (per_shard_docs * s_per_doc + overhead)
            cells.append(f"{wall / 3600:10.2f} h")
        print(f"{name:>6} {n_shards:>7} " + " ".join(f"{c:>12}" for c in cells))


if __name__ == "__main__":
    main()
