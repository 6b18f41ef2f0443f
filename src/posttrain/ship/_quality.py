"""Quantization quality on real text: the statistics of `llama-perplexity --kl-divergence`, in lockstep.

llama.cpp's tool runs twice: once to save the base model's log-probabilities for every token and the
whole vocabulary (gigabytes for a large vocabulary), then once per quantized model against that file.
Here F16 and every variant are loaded together and fed the same chunk one after the other, so F16's
log-probabilities exist for one chunk at a time and are never stored.

Definitions follow llama.cpp's tool, so figures are comparable with what people publish:
- the text is cut into chunks of n_ctx tokens; the first token of each chunk becomes BOS when the
  model adds one; only the second half of each chunk is scored (every scored token has at least
  n_ctx/2 tokens of context);
- KLD(position) = Σ_v p_F16(v) · (ln p_F16(v) − ln p_Q(v)); "same top" = both argmaxes agree;
  Δp = p_Q(next token) − p_F16(next token), summarised as its root mean square;
- mean KLD and the other token-level means carry the standard error SD/√N over scored tokens, as
  llama.cpp prints them.
What this adds: ΔPPL and ln(PPL ratio) get a 95% interval *paired over chunks* (tokens within one
chunk are not independent; chunks are closer to it), by the delta method for ΔPPL.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import special, stats

from posttrain import _native
from posttrain.convert._verify import stderr_to
from posttrain.errors import PosttrainError

DEFAULT_N_CTX = 512
MIN_CHUNKS = 2


def _load(path: str | Path, n_ctx: int, n_gpu_layers: int | None, logits_all: bool):
    Llama = _native.load_llama_cpp().Llama
    try:
        with stderr_to(os.devnull):
            return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=logits_all,
                         verbose=False, n_threads=_native.cpu_threads(), n_threads_batch=_native.cpu_threads(),
                         seed=0, **_native.llama_kwargs(n_gpu_layers))
    except (ValueError, RuntimeError) as e:
        raise PosttrainError(f"llama.cpp cannot load {Path(path).name}: {e}") from None


def _scored_logprobs(llm, chunk: list[int], first: int) -> np.ndarray:
    """Log-probabilities (float64) of the next token at positions first … n−2 of one chunk."""
    llm.reset()
    llm.eval(chunk)
    logits = np.asarray(llm.scores[first:len(chunk) - 1], dtype=np.float64)
    if not np.isfinite(logits).all():
        raise PosttrainError("a model produced non-finite logits on the held-out text: the file is broken")
    return special.log_softmax(logits, axis=1)


@dataclass
class _Tally:
    """Per scored token of one variant: the few numbers the summary needs (no vocabulary rows)."""

    nll: list[np.ndarray] = field(default_factory=list)
    kld: list[np.ndarray] = field(default_factory=list)
    same_top: list[np.ndarray] = field(default_factory=list)
    dp: list[np.ndarray] = field(default_factory=list)


def measure_quality(base: str | Path, variants: dict[str, str | Path], text: str, *, n_ctx: int = DEFAULT_N_CTX,
                    max_chunks: int | None = None, n_gpu_layers: int | None = None) -> dict:
    """KL-divergence statistics of each variant against `base` (F16) on `text`. Runs llama.cpp in this
    process: call it through `posttrain.ship.run_child` so a native crash is seen, not suffered."""
    if n_ctx < 16:
        raise PosttrainError(f"n_ctx must be at least 16, not {n_ctx}")
    base_llm = _load(base, n_ctx, n_gpu_layers, logits_all=True)
    tokens = base_llm.tokenize(text.encode(), add_bos=False, special=False)
    n_chunks = len(tokens) // n_ctx
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks < MIN_CHUNKS:
        raise PosttrainError(f"the held-out text is {len(tokens)} tokens: at least {MIN_CHUNKS * n_ctx} are needed "
                             f"for {MIN_CHUNKS} chunks of {n_ctx}", remedy="pass --text with more text (≥ 10,000 tokens "
                                                                          "is what the figures are meant for)")
    add_bos = bool(base_llm._model.add_bos_token())
    bos = base_llm.token_bos()
    others = {label: _load(path, n_ctx, n_gpu_layers, logits_all=True) for label, path in variants.items()}
    first = n_ctx // 2
    base_nll: list[np.ndarray] = []
    tallies = {label: _Tally() for label in others}
    try:
        for c in range(n_chunks):
            chunk = list(tokens[c * n_ctx:(c + 1) * n_ctx])
            if add_bos:
                chunk[0] = bos
            nxt = np.asarray(chunk[first + 1:])
            rows = np.arange(nxt.size)
            lb = _scored_logprobs(base_llm, chunk, first)
            pb = np.exp(lb)
            nll_b = -lb[rows, nxt]
            top_b = lb.argmax(axis=1)
            base_nll.append(nll_b)
            for label, llm in others.items():
                lq = _scored_logprobs(llm, chunk, first)
                if lq.shape != lb.shape:
                    raise PosttrainError(f"{label} has a vocabulary of {lq.shape[1]} tokens, F16 {lb.shape[1]}: "
                                         "not a quantization of the same model")
                t = tallies[label]
                t.kld.append((pb * (lb - lq)).sum(axis=1))
                t.nll.append(-lq[rows, nxt])
                t.same_top.append(lq.argmax(axis=1) == top_b)
                t.dp.append(np.exp(-t.nll[-1]) - np.exp(-nll_b))
    finally:
        for llm in (base_llm, *others.values()):
            llm.close()
    base_chunks = np.stack(base_nll)
    return {"n_ctx": n_ctx, "n_tokens_text": len(tokens), "n_chunks": n_chunks, "scored_per_chunk": n_ctx - 1 - first,
            "n_scored": int(base_chunks.size), "add_bos": add_bos,
            "f16": {"ppl": float(math.exp(base_chunks.mean()))},
            "variants": {label: summarize(base_chunks, np.stack(t.nll), np.concatenate(t.kld),
                                          np.concatenate(t.same_top), np.concatenate(t.dp))
                         for label, t in tallies.items()}}


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0


def summarize(nll_base: np.ndarray, nll_q: np.ndarray, kld: np.ndarray, same_top: np.ndarray, dp: np.ndarray,
              alpha: float = 0.05) -> dict:
    """The ladder's quality figures of one variant. `nll_base`, `nll_q`: (chunks, scored tokens) negative
    log-likelihoods; the other arrays: one value per scored token."""
    n_chunks = nll_base.shape[0]
    tq = float(stats.t.ppf(1 - alpha / 2, n_chunks - 1))
    a, b = nll_base.mean(axis=1), nll_q.mean(axis=1)  # per-chunk mean NLL (equal-size chunks)
    ppl_base, ppl_q = math.exp(a.mean()), math.exp(b.mean())
    # ΔPPL = e^b̄ − e^ā; delta method with the chunk-level covariance of (ā, b̄): paired over chunks.
    cov = np.cov(np.stack([a, b])) / n_chunks
    grad = np.array([-ppl_base, ppl_q])
    se_dppl = math.sqrt(max(float(grad @ cov @ grad), 0.0))
    d = b - a
    ln_ratio, se_ln = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n_chunks))
    kld_mean, kld_se = _mean_se(kld.astype(np.float64))
    q = np.quantile(kld, [0.5, 0.99, 0.999])
    same = float(same_top.mean())
    dp2 = dp.astype(np.float64) ** 2
    rms = math.sqrt(dp2.mean())
    se_dp2 = float(dp2.std(ddof=1) / math.sqrt(dp2.size)) if dp2.size > 1 else 0.0
    return {
        "ppl": ppl_q, "ppl_f16": ppl_base,
        "delta_ppl": ppl_q - ppl_base, "delta_ppl_ci": [ppl_q - ppl_base - tq * se_dppl, ppl_q - ppl_base + tq * se_dppl],
        "ln_ppl_ratio": ln_ratio, "ln_ppl_ratio_ci": [ln_ratio - tq * se_ln, ln_ratio + tq * se_ln],
        "kld_mean": kld_mean, "kld_se": kld_se, "kld_median": float(q[0]), "kld_p99": float(q[1]),
        "kld_p999": float(q[2]), "kld_max": float(kld.max()),
        "same_top_pct": 100 * same, "same_top_se_pct": 100 * math.sqrt(same * (1 - same) / same_top.size),
        # Standard error of √mean(Δp²) from that of mean(Δp²) (delta method), as llama.cpp prints it.
        "rms_dp_pct": 100 * rms, "rms_dp_se_pct": 100 * (se_dp2 / (2 * rms) if rms > 0 else 0.0),
        "n_scored": int(kld.size), "n_chunks": int(n_chunks),
    }
