"""posttrain convert vs llama.cpp's converter + quantizer run by hand, on the same checkpoint.

    python benchmarks/convert.py [CHECKPOINT] [--repeat 2]
    python benchmarks/convert.py CHECKPOINT --ladder f16,q8_0,q6_k,q5_k_m,q4_k_m,iq4_xs,q3_k_m [--repeat 3]

Without CHECKPOINT it makes SmolLM2-135M-Instruct with ../shared/tools/smollm2-hf (needs the PyPI
`gguf` package for that tool only). Prints wall time and peak RSS of each route and their ratio;
the goal is posttrain (without its verification pass) ≤ 1.05 × by hand.

`--ladder`: the conversion `posttrain ship` makes (llama.cpp's converter once for F16, its quantizer
for every other type, each file checked, hashed and recorded) against the same tools run by hand
(the converter, then `llama_cpp.llama_model_quantize` per type, as llama-quantize does), the two
routes run in turn, each in a fresh process. `--one hand|posttrain --out DIR` runs one route once
into DIR, emptied first (for an outside timer such as farm-bench).
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


def ladder_by_hand(ckpt: Path, out: Path, quants: list[str]) -> None:
    """The ladder's tools run by hand: the converter (F16), then the quantizer binding per type."""
    import ctypes

    from posttrain import llamacpp
    from posttrain.convert import quantizer_types
    from posttrain.toolchain import converter_env, find_converter

    tree = find_converter()
    subprocess.run([sys.executable, str(tree.script), str(ckpt), "--outtype", "f16", "--outfile", str(out / "F16.gguf")],
                   env=converter_env(tree), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lc = llamacpp.load_llama_cpp()
    for quant in (q.upper() for q in quants if q.upper() != "F16"):
        params = lc.llama_model_quantize_default_params()
        params.ftype = quantizer_types()[quant]
        if lc.llama_model_quantize(str(out / "F16.gguf").encode(), str(out / f"{quant}.gguf").encode(),
                                   ctypes.byref(params)) != 0:
            sys.exit(f"quantizer failed for {quant}")


def ladder_posttrain(ckpt: Path, out: Path, quants: list[str]) -> None:
    """What `posttrain ship` (run_ladder) asks of convert."""
    from posttrain.convert import convert_checkpoint

    convert_checkpoint(ckpt, out, quants, quantize_q8_0=True, verify=False)


def ladder(ckpt: Path, quants: str, repeat: int, tmp: Path) -> None:
    runs: dict[str, list[float]] = {"hand": [], "posttrain": []}
    for i in range(repeat):
        for route in runs:  # in turn, so a drift in the machine's speed touches both
            out = tmp / f"ladder-{route}-{i}"
            out.mkdir()
            wall, _ = timed([sys.executable, __file__, str(ckpt), "--ladder", quants, "--one", route, "--out", str(out)])
            runs[route].append(wall)
            shutil.rmtree(out)
            print(f"  run {i + 1} {route:9s} {wall:6.1f} s", flush=True)
    hand, post = (statistics.median(runs[r]) for r in ("hand", "posttrain"))
    ratios = [p / h for p, h in zip(runs["posttrain"], runs["hand"])]
    print(f"ladder {quants} on {ckpt} (median of {repeat}, load average {os.getloadavg()[0]:.1f} at the end)")
    print(f"by hand (converter F16 + quantizer per type): {hand:7.1f} s  (min {min(runs['hand']):.1f}, max {max(runs['hand']):.1f})")
    print(f"posttrain (ship's conversion, no verify)    : {post:7.1f} s  (min {min(runs['posttrain']):.1f}, max {max(runs['posttrain']):.1f})")
    print(f"ratio posttrain/by hand: median {statistics.median(ratios):.3f} (pairs: {', '.join(f'{r:.3f}' for r in ratios)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", type=Path)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--ladder", help="comma-separated types: time the ship ladder's conversion instead")
    ap.add_argument("--one", choices=["hand", "posttrain"], help="with --ladder: run one route once into --out")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.ladder and args.one:
        # Always from an empty folder: a manifest left by the previous run would make posttrain reuse its files.
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        (ladder_by_hand if args.one == "hand" else ladder_posttrain)(args.checkpoint, args.out, args.ladder.split(","))
        return
    if args.ladder:
        with tempfile.TemporaryDirectory() as tmp:
            ladder(args.checkpoint, args.ladder, args.repeat, Path(tmp))
        return
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
