"""Quantization quality on real text: the statistics of `llama-perplexity --kl-divergence`, one model at a time.

Like llama.cpp's tool, F16 runs once over the text and its log-probabilities for every scored token and
the whole vocabulary go to a scratch file (uint16 per vocabulary entry, `_base_rows.py`); then each
variant is loaded alone and compared with F16's rows read back chunk by chunk. Memory is one model and
one chunk's rows, whatever the number of variants; disk is 2 bytes × vocabulary per scored token
(≈ 1 GB for 10,000 tokens of a 49k vocabulary), freed at the end.

Definitions follow llama.cpp's tool, so figures are comparable with what people publish:
- the text is cut into chunks of n_ctx tokens; the first token of each chunk becomes BOS when the
  model adds one; only the second half of each chunk is scored (every scored token has at least
  n_ctx/2 tokens of context);
- KLD(position) = Σ_v p_F16(v) · (ln p_F16(v) − ln p_Q(v)); "same top" = both argmaxes agree;
  Δp = p_Q(next token) − p_F16(next token), summarised as its root mean square;
- mean KLD and the other token-level means carry the standard error SD/√N over scored tokens, as
  llama.cpp prints them.
What this adds: ΔPPL and ln(PPL ratio) get a 95% interval *paired over chunks* (tokens within one
chunk are not independent; chunks are closer to it), by the delta method for ΔPPL. F16's perplexity,
next-token log-probability and top token are kept exactly (float64), not through the uint16 rows, so
ΔPPL, Δp and "same top" are exact; only KLD reads the stored rows.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats

from posttrain import llamacpp
from posttrain.errors import PosttrainError
from posttrain.llamacpp import log_softmax, stderr_to
from posttrain.ship._base_rows import BaseRows

DEFAULT_N_CTX = 512
MIN_CHUNKS = 2
# Rows per block when comparing a chunk: bounds the float64 temporaries (block × vocabulary × 8 bytes each).
_BLOCK_ROWS = 64


def _load(path: str | Path, n_ctx: int, n_gpu_layers: int | None):
    Llama = llamacpp.load_llama_cpp().Llama
    try:
        with stderr_to(os.devnull):
            # The whole chunk in one batch; logits are asked for per position (_scored_logprobs), not for all.
            return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=False,
                         verbose=False, n_threads=llamacpp.best_threads(), n_threads_batch=llamacpp.best_threads(),
                         seed=0, **llamacpp.llama_kwargs(n_gpu_layers))
    except (ValueError, RuntimeError) as e:
        raise PosttrainError(f"llama.cpp cannot load {Path(path).name}: {e}") from None


def _scored_logprobs(llm, chunk: list[int], first: int) -> np.ndarray:
    """Log-probabilities (float64) of the next token at positions first … n−2 of one chunk.

    Only those positions ask llama.cpp for logits: the output projection (a fifth of a small model's
    work per token, vocabulary × width) then runs for half the chunk, and no logits are copied for the
    unscored half (llama-perplexity does the same)."""
    from posttrain.llamacpp import decode_entries, logits_rows

    lc = llamacpp.load_llama_cpp()
    ctx = llm._ctx.ctx
    lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
    last = len(chunk) - 1
    decode_entries(ctx, llm._batch.batch, [(tok, p, (0,), first <= p < last) for p, tok in enumerate(chunk)])
    logits = logits_rows(ctx, last - first, llm.n_vocab())
    if not np.isfinite(logits).all():
        raise PosttrainError("a model produced non-finite logits on the held-out text: the file is broken")
    return log_softmax(logits)


def _chunks(tokens: list[int], n_chunks: int, n_ctx: int, bos: int | None) -> list[list[int]]:
    out = []
    for c in range(n_chunks):
        chunk = list(tokens[c * n_ctx:(c + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        out.append(chunk)
    return out


def measure_quality(base: str | Path, variants: dict[str, str | Path], text: str, *, n_ctx: int = DEFAULT_N_CTX,
                    max_chunks: int | None = None, n_gpu_layers: int | None = None,
                    scratch_dir: str | Path | None = None) -> dict:
    """KL-divergence statistics of each variant against `base` (F16) on `text`. Runs llama.cpp in this
    process: call it through `posttrain.ship.run_child` so a native crash is seen, not suffered.
    `scratch_dir`: where F16's rows are stored while the variants run (default: the system's temp folder)."""
    if n_ctx < 16:
        raise PosttrainError(f"n_ctx must be at least 16, not {n_ctx}")
    first = n_ctx // 2
    scored = n_ctx - 1 - first
    with tempfile.TemporaryDirectory(prefix="posttrain-f16-rows-", dir=scratch_dir) as scratch:
        base_llm = _load(base, n_ctx, n_gpu_layers)
        try:
            tokens = base_llm.tokenize(text.encode(), add_bos=False, special=False)
            n_chunks = len(tokens) // n_ctx
            if max_chunks is not None:
                n_chunks = min(n_chunks, max_chunks)
            if n_chunks < MIN_CHUNKS:
                raise PosttrainError(f"the held-out text is {len(tokens)} tokens: at least {MIN_CHUNKS * n_ctx} are "
                                     f"needed for {MIN_CHUNKS} chunks of {n_ctx}",
                                     remedy="pass --text with more text (≥ 10,000 tokens is what the figures are meant for)")
            add_bos = bool(base_llm._model.add_bos_token())
            chunks = _chunks(tokens, n_chunks, n_ctx, base_llm.token_bos() if add_bos else None)
            n_vocab = base_llm.n_vocab()
            _check_scratch_space(Path(scratch), n_chunks * scored * n_vocab * 2)
            rows = BaseRows.create(Path(scratch) / "f16.rows", n_chunks, scored, n_vocab)
            for chunk in chunks:
                rows.append(_scored_logprobs(base_llm, chunk, first), np.asarray(chunk[first + 1:]))
            rows.finish()
        finally:
            base_llm.close()
        base_nll = rows.nll  # (chunks, scored), exact
        results = {}
        for label, path in variants.items():
            results[label] = summarize(base_nll, *_compare_variant(label, path, chunks, first, rows, n_ctx, n_gpu_layers))
    return {"n_ctx": n_ctx, "n_tokens_text": len(tokens), "n_chunks": n_chunks, "scored_per_chunk": scored,
            "n_scored": int(base_nll.size), "add_bos": add_bos,
            "f16": {"ppl": float(math.exp(base_nll.mean()))}, "variants": results}


def _check_scratch_space(scratch: Path, need: int) -> None:
    free = shutil.disk_usage(scratch).free
    if free < need * 1.05:
        raise PosttrainError(f"F16's log-probabilities need {need / 2**30:.1f} GiB of scratch space in {scratch.parent}, "
                             f"{free / 2**30:.1f} GiB is free",
                             remedy="free some space, use less text (--max-tokens) or pass --out on another disk")


def _compare_variant(label: str, path: str | Path, chunks: list[list[int]], first: int, rows: BaseRows, n_ctx: int,
                     n_gpu_layers: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One variant against F16's stored rows: (chunks, scored) NLL, and per scored token KLD, same top, Δp."""
    llm = _load(path, n_ctx, n_gpu_layers)
    try:
        if llm.n_vocab() != rows.n_vocab:
            raise PosttrainError(f"{label} has a vocabulary of {llm.n_vocab()} tokens, F16 {rows.n_vocab}: "
                                 "not a quantization of the same model")
        nll, kld, same_top = [], [], []
        for c, chunk in enumerate(chunks):
            lq = _scored_logprobs(llm, chunk, first)
            nxt = np.asarray(chunk[first + 1:])
            nll.append(-lq[np.arange(nxt.size), nxt])
            same_top.append(lq.argmax(axis=1) == rows.top[c])
            for start, lb in rows.blocks(c, _BLOCK_ROWS):
                block = lq[start:start + lb.shape[0]]
                with np.errstate(invalid="ignore"):  # 0 · (−inf − x): a token below F16's stored range
                    kld.append(np.nansum(np.exp(lb) * (lb - block), axis=1))
    finally:
        llm.close()
    nll_q = np.stack(nll)
    dp = np.exp(-nll_q) - np.exp(-rows.nll)
    return nll_q, np.concatenate(kld), np.concatenate(same_top), dp.ravel()


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
