"""What turning off llama.cpp's extra CPU buffer types (posttrain's AMX fix) costs on this CPU.

With them on (llama.cpp's default), llama.cpp repacks Q4_0/Q4_K/IQ4_NL weights into an interleaved
layout (`CPU_REPACK`) on AVX2/AVX-512 CPUs, and uses AMX tiles on CPUs with AMX (where the first
decode of a quantized model crashes: issue 10). posttrain loads every model with them off.

For each GGUF, each setting is timed in a fresh process (alternating, `--reps` times): prefill of
512-token batches (the shape of evaluation) and single-token decode (the shape of generation),
through posttrain's own engine. Prints tokens/s, min/median/max, and the ratio off/on.

    python benchmarks/extra_bufts.py --gguf m-Q8_0.gguf --gguf m-Q4_K_M.gguf [--reps 3]

A model whose tensor rows are multiples of 256 (most real LLMs) gets k-quants on every tensor; one
that is not (SmolLM2-135M: hidden 576) falls back to Q5_0/Q8_0 for most of them and repacks little.
`--make DIR` writes such a model first (random weights, Llama, hidden 1024, 8 layers, ~100M params)
and converts it to Q8_0 and Q4_K_M with posttrain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import json, sys, time
    from posttrain.llamacpp import LlamaCppEngine, ScoreRequest
    path, n_batches = sys.argv[1], int(sys.argv[2])
    engine = LlamaCppEngine(path, n_ctx=1024, n_batch=512)
    vocab = engine.n_vocab

    def batch(b):  # a different first token each time: no KV prefix can be reused between batches
        return [(i * 7919 + b * 104729) % (vocab - 10) + 5 for i in range(512)]

    warm = batch(n_batches)
    engine.score_sequential([ScoreRequest(tuple(warm[:256]), tuple(warm[256:260]))])
    t0 = time.perf_counter()
    for b in range(n_batches):
        tokens = batch(b)
        engine.score_sequential([ScoreRequest(tuple(tokens[:511]), (tokens[511],))])
    prefill = n_batches * 512 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    out = engine.generate_greedy(batch(n_batches + 1)[:8], max_tokens=64)
    decode = len(out) / (time.perf_counter() - t0)
    print(json.dumps({"prefill": prefill, "decode": decode,
                      "extra_bufts": bool(engine.model_params.use_extra_bufts)}))
    engine.close()
""")


def run_once(gguf: Path, extra_bufts: bool, batches: int) -> dict:
    env = {**os.environ, "POSTTRAIN_LLAMA_EXTRA_BUFTS": "1" if extra_bufts else "0"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(gguf), str(batches)], capture_output=True, text=True,
                          env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_model(out: Path) -> list[Path]:
    from posttrain.convert import convert_checkpoint
    from posttrain.tiny import make_tiny

    ckpt = out / "hf"
    if not (ckpt / "config.json").exists():
        make_tiny(ckpt, hidden_size=1024, intermediate_size=2816, num_layers=8, num_heads=16, num_kv_heads=4,
                  init_std=0.02)
    result = convert_checkpoint(ckpt, out / "gguf", ["f16", "q8_0", "q4_k_m"], model_name="bench1024",
                                verify=False)
    return [result.variant("Q8_0").path, result.variant("Q4_K_M").path]


def fmt(values: list[float]) -> str:
    return f"{min(values):7.1f} / {statistics.median(values):7.1f} / {max(values):7.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, action="append", default=[])
    ap.add_argument("--make", type=Path, help="write and convert a 256-aligned ~100M Llama here first")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batches", type=int, default=4, help="512-token prefill batches per measurement")
    ns = ap.parse_args()
    ggufs = list(ns.gguf) + (make_model(ns.make) if ns.make else [])
    if not ggufs:
        ap.error("give --gguf FILE (repeatable) or --make DIR")
    for gguf in ggufs:
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(ns.reps):
            for setting in (False, True):  # alternating, so drift on a shared machine hits both alike
                runs[setting].append(run_once(gguf, setting, ns.batches))
        print(f"{gguf.name}  (tokens/s, min / median / max of {ns.reps})")
        for setting in (True, False):
            label = "extra buffer types on  (llama.cpp default)" if setting else "extra buffer types off (posttrain)"
            print(f"  {label}: prefill {fmt([r['prefill'] for r in runs[setting]])}"
                  f"   decode {fmt([r['decode'] for r in runs[setting]])}")
        for shape in ("prefill", "decode"):
            off = statistics.median(r[shape] for r in runs[False])
            on = statistics.median(r[shape] for r in runs[True])
            print(f"  {shape}: off/on = {off / on:.2f}")


if __name__ == "__main__":
    main()
