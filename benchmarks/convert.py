"""posttrain convert vs llama.cpp's converter + quantizer run by hand, on the same checkpoint.

    python benchmarks/convert.py [CHECKPOINT] [--repeat 2]

Without CHECKPOINT it makes SmolLM2-135M-Instruct with ../shared/tools/smollm2-hf (needs the PyPI
`gguf` package for that tool only). Prints wall time and peak RSS of each route and their ratio;
the goal is posttrain (without its verification pass) ≤ 1.05 × by hand.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_TOOL = ROOT.parent / "shared" / "tools" / "smollm2-hf"


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of the command and the children it waited for."""
    with tempfile.TemporaryFile() as log:  # a pipe would fill up and stall the quantizer's chatter
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            sys.exit(f"failed: {' '.join(cmd)}\n{log.read().decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def by_hand(ckpt: Path, out: Path) -> tuple[float, int]:
    from posttrain.toolchain import converter_env, find_converter

    tree = find_converter()
    env = converter_env(tree)
    total, peak = 0.0, 0
    for outtype in ("f16", "q8_0"):
        wall, rss = timed([sys.executable, str(tree.script), str(ckpt), "--outtype", outtype,
                           "--outfile", str(out / f"hand-{outtype}.gguf")], env)
        total, peak = total + wall, max(peak, rss)
    quantize = ("import ctypes, llama_cpp, sys; p = llama_cpp.llama_model_quantize_default_params(); "
                "p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M; "
                "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))")
    wall, rss = timed([sys.executable, "-c", quantize, str(out / "hand-f16.gguf"), str(out / "hand-q4_k_m.gguf")])
    return total + wall, max(peak, rss)


def with_posttrain(ckpt: Path, out: Path, verify: bool) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "posttrain", "convert", str(ckpt), "--out", str(out), "-q", "f16,q8_0,q4_k_m"]
    return timed(cmd if verify else [*cmd, "--no-verify"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", type=Path)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = args.checkpoint
        if ckpt is None:
            ckpt = tmp / "smollm2"
            subprocess.run([sys.executable, str(SMOLLM2_TOOL), str(ckpt)], check=True, stdout=subprocess.DEVNULL)
        hand, plain, verified = [], [], []
        for i in range(args.repeat):
            for runs, fn in ((hand, lambda o: by_hand(ckpt, o)), (plain, lambda o: with_posttrain(ckpt, o, False)),
                             (verified, lambda o: with_posttrain(ckpt, o, True))):
                out = tmp / f"out-{len(runs)}-{i}-{id(runs)}"
                out.mkdir()
                runs.append(fn(out))
                shutil.rmtree(out)
        med = lambda runs: statistics.median(w for w, _ in runs)  # noqa: E731
        peak = lambda runs: max(r for _, r in runs) / 2**20  # noqa: E731
        print(f"checkpoint: {ckpt}  (median of {args.repeat} runs, F16 + Q8_0 + Q4_K_M)")
        print(f"by hand (converter ×2 + quantizer): {med(hand):7.1f} s   peak RSS {peak(hand):7.0f} MiB")
        print(f"posttrain convert --no-verify     : {med(plain):7.1f} s   peak RSS {peak(plain):7.0f} MiB")
        print(f"posttrain convert (with verify)   : {med(verified):7.1f} s   peak RSS {peak(verified):7.0f} MiB")
        print(f"ratio posttrain/by hand: {med(plain) / med(hand):.3f} (goal ≤ 1.05); "
              f"verification adds {med(verified) - med(plain):.1f} s")


if __name__ == "__main__":
    main()
