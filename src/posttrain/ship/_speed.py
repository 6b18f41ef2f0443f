"""Speed the way llama-bench measures it, in-process: pp512 and tg128 tokens per second.

llama-bench's two standard tests: prompt processing of 512 tokens in one batch (`pp512`) and
generation of 128 tokens one at a time from an empty context (`tg128`), each after a warm-up run,
repeated, on random token ids (the content does not change the arithmetic). We report the median of
the repetitions, the thread count and llama.cpp's own description of the build (CPU features,
backends), since those decide the figures as much as the quantization does, and what else the
machine was doing during the timed runs (`posttrain/_run_conditions.py`: a busy machine gives lower figures).
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from posttrain import llamacpp
from posttrain._run_conditions import CpuWatch
from posttrain.ship._quality import _load

DEFAULT_REPS = 3


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure_speed(path: str | Path, *, n_prompt: int = 512, n_gen: int = 128, reps: int = DEFAULT_REPS,
                  n_gpu_layers: int | None = None, seed: int = 0) -> dict:
    """pp{n_prompt} and tg{n_gen} tokens/s of one GGUF (median of `reps`), with threads and build recorded.
    Runs llama.cpp in this process: call it through `posttrain.ship.run_child`."""
    if reps < 1:
        raise ValueError("reps must be at least 1")
    llm = _load(path, n_prompt + n_gen, n_gpu_layers)
    try:
        rng = random.Random(seed)
        vocab = llm.n_vocab()
        prompt = [rng.randrange(vocab) for _ in range(n_prompt)]
        gen = [rng.randrange(vocab) for _ in range(n_gen)]

        def pp() -> None:
            llm.reset()
            llm.eval(prompt)

        def tg() -> None:
            llm.reset()
            for tok in gen:  # one token per decode, as generation does
                llm.eval([tok])

        pp(), tg()  # warm-up, as llama-bench does: first-touch of the weights is not speed
        with CpuWatch() as watch:  # the timed runs only: they are what the figures come from
            pp_s = [_timed(pp) for _ in range(reps)]
            tg_s = [_timed(tg) for _ in range(reps)]
        n_params = int(llm._model.n_params())
    finally:
        llm.close()
    size = Path(path).stat().st_size
    return {"pp_tokens": n_prompt, "tg_tokens": n_gen, "reps": reps,
            "pp_tok_s": n_prompt / statistics.median(pp_s), "tg_tok_s": n_gen / statistics.median(tg_s),
            "pp_tok_s_all": [n_prompt / s for s in pp_s], "tg_tok_s_all": [n_gen / s for s in tg_s],
            "threads": llamacpp.best_threads(), "build": llamacpp.system_info(),
            "n_gpu_layers": llamacpp.resolve_gpu_layers(n_gpu_layers), "conditions": watch.conditions.to_json(),
            "size_bytes": size, "n_params": n_params, "bits_per_weight": 8 * size / n_params if n_params else None}
