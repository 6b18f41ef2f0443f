"""The ship ladder's quality pass alone: wall time, peak RSS and the figures, on a folder of GGUF variants.

    python benchmarks/ship_quality.py GGUF_DIR TEXT [--n-ctx 512] [--max-chunks 4]

GGUF_DIR holds `<name>-F16.gguf` and the variants (`posttrain convert` or `posttrain ship` output);
TEXT is a plain or .bz2 text file. Runs `measure_quality` in this process (peak RSS is this process's
ru_maxrss). To compare with an older posttrain, run it with PYTHONPATH pointing at that version's src
(e.g. `git archive 2737485 src | tar -x -C /tmp/old`: the lockstep implementation that loaded every
variant at once).
"""

from __future__ import annotations

import argparse
import inspect
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf_dir", type=Path)
    ap.add_argument("text", type=Path)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--max-chunks", type=int, default=4)
    args = ap.parse_args()

    from posttrain.ship import measure_quality, read_text

    files = {p.stem.rsplit("-", 1)[1]: str(p) for p in sorted(args.gguf_dir.glob("*.gguf"))}
    base = files.pop("F16")
    text, _ = read_text(args.text, max_chars=args.n_ctx * (args.max_chunks + 1) * 16)
    with tempfile.TemporaryDirectory() as scratch:
        kwargs = {"scratch_dir": scratch} if "scratch_dir" in inspect.signature(measure_quality).parameters else {}
        started = time.perf_counter()
        res = measure_quality(base, files, text, n_ctx=args.n_ctx, max_chunks=args.max_chunks, **kwargs)
        wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"{len(files)} variants against F16, {res['n_chunks']} chunks of {res['n_ctx']}, {res['n_scored']} scored "
          f"tokens: wall {wall:.1f} s, peak RSS {peak:.0f} MiB")
    for label, v in sorted(res["variants"].items(), key=lambda kv: kv[1]["kld_mean"]):
        print(f"  {label:8s} KLD {v['kld_mean']:.6g} ± {v['kld_se']:.2g}  ΔPPL {v['delta_ppl']:+.5g}  "
              f"same top {v['same_top_pct']:.2f}%  RMS Δp {v['rms_dp_pct']:.3f}%")


if __name__ == "__main__":
    main()
