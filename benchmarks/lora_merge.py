"""Memory and time of the two LoRA routes on a real base: PEFT merge (CPU, the base's dtype) and
llama.cpp's convert_lora_to_gguf.py.

    python benchmarks/lora_merge.py BASE_DIR [--rank 16] [--out DIR]

BASE_DIR: a Hugging Face checkpoint, e.g. `/work/shared/tools/smollm2-hf /tmp/smollm2` (SmolLM2-135M,
bf16). A LoRA on every attention and MLP projection is made with PEFT (random B so the merge changes
the weights; memory and time do not depend on training). The merge runs in this process under a
sampler of its resident memory; printed: the base's weight bytes, the RSS before the merge (torch,
transformers and PEFT imported), the peak during it, and the peak above the start as a multiple of
the base's weight bytes (the route promises about one copy of the base). RSS counts the base's
safetensors pages that are memory-mapped (file-backed, reclaimable); where the OS reports shared
pages (Linux), the anonymous part (RSS − shared: what the merge really allocates) is printed too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import posttrain  # noqa: F401  (before torch, as every posttrain process does)


def make_adapter(base: Path, out: Path, rank: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)
    del peft_model, model
    return out


class Sampler:
    """Peak RSS and peak anonymous memory (RSS − shared, where reported) of this process."""

    def __init__(self, interval: float = 0.02):
        import threading

        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.peak_rss = self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> tuple[int, int | None]:
        mi = self.proc.memory_info()
        anon = mi.rss - mi.shared if hasattr(mi, "shared") else None
        self.peak_rss = max(self.peak_rss, mi.rss)
        self.peak_anon = max(self.peak_anon, anon or 0)
        return mi.rss, anon

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Sampler:
        self.start = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import gc

    import peft  # noqa: F401
    import transformers  # noqa: F401

    from posttrain.checkpoint import human_bytes, inspect_adapter, inspect_checkpoint
    from posttrain.lora import convert_adapter, merge_adapter

    out = args.out or Path(tempfile.mkdtemp(prefix="lora-bench-"))
    base_bytes = inspect_checkpoint(args.base, settle_seconds=0).total_bytes
    adapter = make_adapter(args.base, out / "adapter", args.rank)
    gc.collect()
    verdict = inspect_adapter(adapter, base=args.base)
    t = time.perf_counter()
    with Sampler() as sampler:
        merge_adapter(verdict, out / "merged", force=True)
    merge_s = time.perf_counter() - t
    t = time.perf_counter()
    gguf = convert_adapter(verdict, out / "adapter-F16.gguf")
    gguf_s = time.perf_counter() - t
    (start_rss, start_anon) = sampler.start
    above = sampler.peak_rss - start_rss
    print(f"base weights          {human_bytes(base_bytes)} ({args.base})")
    print(f"adapter               rank {args.rank}, {human_bytes(verdict.total_bytes)}")
    print(f"RSS before merge      {human_bytes(start_rss)}")
    print(f"peak RSS during merge {human_bytes(sampler.peak_rss)} (+{human_bytes(above)}, "
          f"{above / base_bytes:.2f}x the base's weight bytes; includes the base's memory-mapped file pages)")
    if start_anon is not None:
        grew = sampler.peak_anon - start_anon
        print(f"peak anonymous memory +{human_bytes(grew)} ({grew / base_bytes:.2f}x the base's weight bytes)")
    print(f"merge                 {merge_s:.1f} s (load, merge, save)")
    print(f"GGUF adapter          {gguf_s:.1f} s, {human_bytes(gguf.stat().st_size)} (child process)")


if __name__ == "__main__":
    main()
