"""Check a GGUF variant against F16 on a fixed probe text (the llama-perplexity KL-divergence idea).

Every variant sees the same probe tokens (tokenized once by the F16 file's own vocabulary); the
mean KL divergence of its next-token distributions from F16's, and how often its top-1 token
agrees with F16's, say how much quantization moved the model. F16 itself is checked against the
Hugging Face model on the same tokens when the checkpoint is small enough to load in float32.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from posttrain import llamacpp
from posttrain.errors import PosttrainError
from posttrain.llamacpp import log_softmax, stderr_to

if TYPE_CHECKING:
    from posttrain.convert._built import BuiltVariant

PROBE_TEXT = (
    "The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon, and "
    "Neil Armstrong said: \"That's one small step for man.\" To compute 17 + 25, add the tens "
    "(10 + 20 = 30) and the ones (7 + 5 = 12), which gives 42.\n"
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
    "Paris is the capital of France; Berlin is the capital of Germany. Water boils at 100 degrees."
)
# Beyond these a variant is broken, not merely lossy (llama.cpp's Q4_K_M on LLaMA-3-8B: ~0.03 nats).
MAX_MEAN_KLD = 1.0
MAX_F16_VS_HF_DLOGPROB = 0.5


@dataclass
class ProbeLogprobs:
    tokens: list[int]
    logprobs: np.ndarray  # (positions, vocab), natural-log probabilities of the next token


def _load(path: Path, n_ctx: int, n_gpu_layers: int | None = None):
    # Through posttrain.llamacpp: no extra CPU buffer types (the AMX crash), llama.cpp before numpy.
    Llama = llamacpp.load_llama_cpp().Llama

    try:
        with stderr_to(os.devnull):
            return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False,
                         n_threads=llamacpp.best_threads(), seed=0, **llamacpp.llama_kwargs(n_gpu_layers))
    except (ValueError, RuntimeError) as e:
        raise PosttrainError(f"llama.cpp cannot load {path.name}: {e}",
                             remedy="if the converter was given --pre-tokenizer, use a name llama.cpp knows "
                                    "(e.g. gpt-2, llama-bpe, qwen2)") from None


def probe_tokens(f16_path: Path) -> list[int]:
    llm = _load(f16_path, 512)
    try:
        # The GGUF's own add_bos flag decides, exactly as llama.cpp will at inference time.
        return llm.tokenize(PROBE_TEXT.encode(), add_bos=llm._model.add_bos_token())
    finally:
        llm.close()


def gguf_logprobs(path: Path, tokens: list[int], n_gpu_layers: int | None = None) -> ProbeLogprobs:
    llm = _load(path, max(512, len(tokens) + 8), n_gpu_layers)
    try:
        llm.reset()
        llm.eval(tokens)
        logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()
    if not np.isfinite(logits).all():
        raise PosttrainError(f"{path.name} produces non-finite logits on the probe text: the file is broken")
    return ProbeLogprobs(tokens, log_softmax(logits))


def hf_logprobs(checkpoint: Path, tokens: list[int]) -> ProbeLogprobs:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.eval()
    with torch.inference_mode():
        logits = model(torch.tensor([tokens])).logits[0].numpy()
    return ProbeLogprobs(tokens, log_softmax(logits))


def compare(reference: ProbeLogprobs, other: ProbeLogprobs) -> dict[str, float]:
    """KL(reference ‖ other) per position, top-1 agreement, and the largest |Δ log p| of the probe's own tokens."""
    p, q = reference.logprobs, other.logprobs
    n_vocab = min(p.shape[1], q.shape[1])
    p, q = p[:, :n_vocab], q[:, :n_vocab]
    kld = (np.exp(p) * (p - q)).sum(axis=1)
    top1 = float((p.argmax(axis=1) == q.argmax(axis=1)).mean())
    nxt = np.array(reference.tokens[1:])
    rows = np.arange(len(nxt))
    dlogprob = np.abs(p[rows, nxt] - q[rows, nxt])
    return {"mean_kld": float(kld.mean()), "max_kld": float(kld.max()), "top1_agreement": top1,
            "max_abs_dlogprob": float(dlogprob.max()), "n_positions": int(len(kld))}


def load_check(path: Path, n_gpu_layers: int | None = None) -> None:
    """The file loads in llama.cpp (weights and vocabulary) and a context can be made on it; raises
    PosttrainError otherwise.

    Through llama.cpp's own API rather than `llama_cpp.Llama`: the wrapper silences llama.cpp by
    redirecting fd 2, which is process-wide (FD2_LOCK), so a check made while the quantizer writes its
    log would wait for the whole quantization. Here llama.cpp's messages are only filtered to errors
    (what `Llama(verbose=False)` leaves the process with anyway), and nothing waits.
    """
    lc = llamacpp.load_llama_cpp()
    from llama_cpp._logger import set_verbose

    set_verbose(False)
    remedy = ("if the converter was given --pre-tokenizer, use a name llama.cpp knows (e.g. gpt-2, llama-bpe, qwen2)")
    model = lc.llama_model_load_from_file(str(path).encode(), llamacpp.model_params(n_gpu_layers))
    if not model:
        raise PosttrainError(f"llama.cpp cannot load {path.name}", remedy=remedy)
    try:
        params = lc.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = 64
        params.n_threads = params.n_threads_batch = 1
        ctx = lc.llama_init_from_model(model, params)
        if not ctx:
            raise PosttrainError(f"llama.cpp cannot load {path.name}: no context could be made on it", remedy=remedy)
        lc.llama_free(ctx)
    finally:
        lc.llama_model_free(model)


def verify_variants(variants: list[BuiltVariant], checkpoint: Path, ckpt_bytes: int, hf_reference: bool | None,
                    say: Callable[[str, str], None], n_gpu_layers: int | None = None) -> None:
    """The probe-text check: F16 against the Hugging Face model (small models, or when asked), every
    other variant against F16. A variant that fails is deleted and named in the error."""
    f16 = next(v for v in variants if v.quant == "F16")
    say("F16", "verifying (probe text)")
    tokens = probe_tokens(f16.path)
    reference = gguf_logprobs(f16.path, tokens, n_gpu_layers)
    if hf_reference is None:
        hf_reference = ckpt_bytes <= 1_500_000_000  # float32 copy of a ≤ 0.75B-param model fits easily
    if hf_reference:
        say("F16", "verifying against the Hugging Face model")
        hf = hf_logprobs(checkpoint, tokens)
        f16.verification["vs_hf"] = compare(hf, reference)
        if f16.verification["vs_hf"]["max_abs_dlogprob"] > MAX_F16_VS_HF_DLOGPROB:
            for v in variants:  # every variant derives from this F16 or the same conversion
                v.path.unlink(missing_ok=True)
            raise PosttrainError(f"F16 disagrees with the Hugging Face model on the probe text "
                                 f"(max |Δ log p| = {f16.verification['vs_hf']['max_abs_dlogprob']:.3f})",
                                 remedy="the conversion is wrong for this architecture; report it with the checkpoint's config.json")
    f16.verification["vs_f16"] = {"mean_kld": 0.0, "max_kld": 0.0, "top1_agreement": 1.0,
                                  "max_abs_dlogprob": 0.0, "n_positions": len(tokens) }
    for v in variants:
        if v.quant == "F16":
            continue
        say(v.quant, "verifying against F16")
        v.verification["vs_f16"] = compare(reference, gguf_logprobs(v.path, tokens, n_gpu_layers))
        if v.verification["vs_f16"]["mean_kld"] > MAX_MEAN_KLD:
            v.path.unlink(missing_ok=True)
            raise PosttrainError(f"{v.quant} fails verification: mean KL divergence from F16 is "
                                 f"{v.verification['vs_f16']['mean_kld']:.3f} nats on the probe text",
                                 remedy=f"delete {v.path} and convert again; if it persists, the quantizer is broken for this model")
    for v in variants:
        v.verification["probe_tokens"] = len(tokens)
