"""The ship ladder on a real model: SmolLM2-135M, held-out HellaSwag text, HellaSwag items.

    python benchmarks/ship.py [--out DIR] [--limit 60] [--max-tokens 10240] [--quants f16,q8_0,...]

Makes the checkpoint with ../shared/tools/smollm2-hf (offline, reused when present; it needs PyPI's
`gguf` importable, e.g. `pip install --target DIR gguf` and PYTHONPATH=DIR for that one run), then runs the
whole ladder (convert once, evaluate every variant on the same items, KLD on the text, speed) and
prints the table, the sentence and the wall time of each part. Also times llama.cpp's converter run
by hand on the same checkpoint, the floor the ladder's conversion is held to.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from posttrain.ship import DEFAULT_LADDER, run_ladder, table, write_ship_reports
from posttrain.store import Store

SHARED = Path(__file__).resolve().parents[2] / "shared"
TEXT = SHARED / "data" / "benchmarks" / "hellaswag" / "hellaswag_val_full.txt.bz2"


def _hand_conversion(checkpoint: Path, quants: list[str]) -> tuple[float, float]:
    """Seconds for the same tools run by hand, the floor the ladder's conversion is held to: llama.cpp's
    converter once (F16), then llama.cpp's quantizer per type (the binding llama-quantize wraps)."""
    import ctypes

    from posttrain import llamacpp
    from posttrain.convert import quantizer_types
    from posttrain.llamacpp import stderr_to
    from posttrain.toolchain import converter_env, find_converter

    tree = find_converter(None)
    lc = llamacpp.load_llama_cpp()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run([sys.executable, str(tree.root / "convert_hf_to_gguf.py"), str(checkpoint), "--outtype", "f16",
                        "--outfile", f"{tmp}/f16.gguf"], env=converter_env(tree), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        converter = time.perf_counter() - started
        for quant in (q.upper() for q in quants if q.upper() != "F16"):
            params = lc.llama_model_quantize_default_params()
            params.ftype = quantizer_types()[quant]
            with stderr_to(os.devnull):  # llama.cpp's per-tensor log, as llama-quantize prints it
                lc.llama_model_quantize(f"{tmp}/f16.gguf".encode(), f"{tmp}/{quant}.gguf".encode(),
                                        ctypes.byref(params))
        return converter, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "posttrain-ship-bench")
    ap.add_argument("--limit", type=int, default=60, help="HellaSwag items per variant")
    ap.add_argument("--max-tokens", type=int, default=10_240)
    ap.add_argument("--quants", default=",".join(DEFAULT_LADDER))
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    ckpt = args.out / "smollm2-135m"
    if not (ckpt / "config.json").is_file():
        # The tool reads a GGUF through transformers, which needs PyPI's `gguf` importable.
        subprocess.run([sys.executable, str(SHARED / "tools" / "smollm2-hf"), str(ckpt)], check=True)
    started = time.perf_counter()
    doc = run_ladder(ckpt, out_dir=args.out / "ship", store=Store(args.out / "posttrain.db"), tasks=["hellaswag"],
                     data_dir=SHARED / "data" / "benchmarks", quants=args.quants.split(","), text=TEXT,
                     max_tokens=args.max_tokens, limit=args.limit, speed_reps=args.reps,
                     say=lambda line: print(f"  [{time.perf_counter() - started:6.1f} s] {line}", flush=True))
    total = time.perf_counter() - started
    files = write_ship_reports(doc, args.out / "ship")
    head, rows = table(doc)
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(c.replace("**", "") for c in r) + " |")
    print()
    print(doc["verdict"]["sentence"])
    print(f"\nwall time: total {total:.1f} s; " + ", ".join(f"{k} {v:.1f} s" for k, v in doc["seconds"].items()))
    print(f"text: {doc['text']['n_tokens_text']:,} tokens read, {doc['text']['n_chunks']} chunks of "
          f"{doc['text']['n_ctx']}, {doc['text']['n_scored']:,} scored")
    converter, by_hand = _hand_conversion(ckpt, args.quants.split(","))
    print(f"by hand: llama.cpp's converter (F16) {converter:.1f} s, + quantizer per type: {by_hand:.1f} s in all; "
          f"posttrain (the ladder's convert): {doc['seconds']['convert']:.1f} s; ratio posttrain/by hand "
          f"{doc['seconds']['convert'] / by_hand:.2f} (one run each, not interleaved: "
          f"benchmarks/convert.py --ladder repeats them in turn)")
    print(f"report: {files['html']}")


if __name__ == "__main__":
    main()
