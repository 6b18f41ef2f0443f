"""A GGUF model in-process through llama.cpp's C API (llama-cpp-python's ctypes bindings).

The high-level `llama_cpp.Llama` class evaluates one sequence at a time and, to give prompt
log-probs, computes a full vocabulary row for every position. Scoring benchmarks is dominated by
short sequences (a ~40-token context, ~10-token endings), where llama.cpp runs far below its
prefill throughput unless many sequences share one `llama_decode`. So this module talks to the
C API directly: one context with a unified KV cache and `n_seq_max` sequences, batches whose
shared-context tokens belong to several sequences at once, and logits only at scored positions.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from posttrain.errors import PosttrainError
from posttrain.llamacpp import _loading, _settings
from posttrain.llamacpp._batch import decode_entries, logits_rows
from posttrain.llamacpp._generation import GenerationMixin
from posttrain.llamacpp._scoring import Scored, ScoreRequest, ScoringMixin

__all__ = ["MAX_SEQUENCES", "LlamaCppEngine", "ScoreRequest", "Scored"]

# Largest number of sequences one context holds; llama.cpp's own limit is 256 (LLAMA_MAX_SEQ).
MAX_SEQUENCES = 64

# KV cache element types (ggml_type values). llama.cpp's default is f16; f32 removes the cache's
# rounding, which is what separates an F32 GGUF from the float32 Hugging Face reference.
_KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}


def _llama():
    lc = _loading.load_llama_cpp()
    import llama_cpp._logger  # noqa: F401  (lc._logger below)

    return lc


class LlamaCppEngine(ScoringMixin, GenerationMixin):
    """Owns one loaded GGUF model and one llama.cpp context; not thread-safe."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int | None = None,
        n_ctx_cap: int = 8192,
        n_batch: int = 512,
        n_ubatch: int | None = None,  # llama.cpp's compute micro-batch: the machine profile's (256 unmeasured)
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        n_seq_max: int = MAX_SEQUENCES,
        flash_attn: bool = False,
        kv_type: str = "f16",
        verbose: bool = False,
        lora_path: str | os.PathLike[str] | None = None,
        lora_scale: float = 1.0,
    ) -> None:
        lc = _llama()
        lc._logger.set_verbose(verbose)
        path = Path(model_path)
        if not path.is_file():
            raise PosttrainError(
                f"GGUF model not found: {path}", remedy="pass the path of an existing .gguf file"
            )
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise PosttrainError(
                f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)",
                remedy="convert the checkpoint with `posttrain convert` first",
            )
        lc.llama_backend_init()
        # No extra CPU buffer types (the AMX crash) and the GPU layers asked for: see posttrain.llamacpp._loading.
        mparams = _loading.model_params(n_gpu_layers)
        self.model_params = mparams
        self._model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            raise PosttrainError(
                f"llama.cpp could not load {path} (corrupt, truncated, or an architecture this "
                f"llama.cpp build does not know)",
                remedy="re-convert the checkpoint, or upgrade llama-cpp-python",
            )
        self.path = path
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(self._model))
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self._vocab))
        bos, eos = int(lc.llama_vocab_bos(self._vocab)), int(lc.llama_vocab_eos(self._vocab))
        self.bos_id: int | None = bos if bos >= 0 else None
        self.eos_id: int | None = eos if eos >= 0 else None

        # Threads and micro-batch as this machine's profile found fastest (docs/llamacpp-backend.md).
        self.n_threads = n_threads or _settings.best_threads()
        # Default KV size: the trained context (capped), and at least one full batch.
        self.n_ctx = int(n_ctx) if n_ctx else max(min(self.n_ctx_train or 2048, n_ctx_cap), n_batch)
        self.n_batch = int(min(n_batch, self.n_ctx))
        self.n_seq_max = int(max(1, min(n_seq_max, 256)))
        kv = _KV_TYPES.get(kv_type.lower())
        if kv is None:
            self.close()
            raise PosttrainError(f"unknown kv_type {kv_type!r}", remedy=f"use one of {', '.join(_KV_TYPES)}")
        self._n_ubatch = int(n_ubatch or _settings.n_ubatch())
        self._flash_attn, self._kv_type_id = bool(flash_attn), kv
        # One KV buffer shared by all sequences: a context token can then belong to every ending's
        # sequence at once (no copies), and each sequence may use the whole n_ctx.
        self._ctx = self._new_context(self.n_ctx, self.n_seq_max, unified=True)
        if not self._ctx:
            self.close()
            raise PosttrainError(
                f"llama.cpp could not create a context for {path} (n_ctx={self.n_ctx})",
                remedy="lower n_ctx / n_batch, or free memory",
            )
        # Generation without a shared prefix runs in a second context of its own, made when first
        # needed (see _slots).
        self._slots = None
        self._lora = None
        if lora_path is not None:
            self._apply_lora(Path(lora_path), float(lora_scale))
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(self.n_batch, 0, self.n_seq_max)
        self._batch_ok = True
        # Tokens held in sequence 0 by the sequential paths, for prefix reuse between calls.
        self._seq0: list[int] = []
        self.tokens_evaluated = 0

    def _apply_lora(self, path: Path, scale: float) -> None:
        """A GGUF LoRA (convert_lora_to_gguf.py) applied to every decode of this context, times `scale`."""
        lc = _llama()
        if not path.is_file():
            self.close()
            raise PosttrainError(f"LoRA adapter not found: {path}", remedy="pass the path of an adapter .gguf")
        self._lora = lc.llama_adapter_lora_init(self._model, str(path).encode())
        if not self._lora:
            self.close()
            raise PosttrainError(f"llama.cpp could not load the LoRA adapter {path} onto {self.path}",
                                 remedy="the adapter must be a GGUF LoRA made for this base model "
                                        "(`posttrain lora gguf`)")
        self.lora_path, self.lora_scale = path, scale
        if not self._attach_lora(self._ctx):
            self.close()
            raise PosttrainError(f"llama.cpp refused to apply the LoRA adapter {path}")

    def _attach_lora(self, ctx) -> bool:
        """Apply this engine's LoRA adapter (if any) to `ctx`; False when llama.cpp refuses."""
        if not getattr(self, "_lora", None):
            return True
        lc = _llama()
        adapters = (lc.llama_adapter_lora_p_ctypes * 1)(self._lora)
        scales = (ctypes.c_float * 1)(self.lora_scale)
        return lc.llama_set_adapters_lora(ctx, adapters, 1, scales) == 0

    def _new_context(self, n_ctx: int, n_seq_max: int, *, unified: bool):
        """A llama.cpp context on this model with this engine's batch, threads, attention and KV
        settings. `unified`: one KV buffer for all sequences (cells shared between sequences);
        otherwise one stream of n_ctx / n_seq_max cells per sequence, each attending only to its own."""
        lc = _llama()
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = int(n_ctx)
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = int(min(self._n_ubatch, self.n_batch))
        cparams.n_seq_max = int(n_seq_max)
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        cparams.kv_unified = unified
        # llama.cpp's default (auto) turns flash attention on; on CPU with an F16 KV cache it moved
        # F32 log-likelihoods ~1e-3 away from the reference per few tokens, plain attention ~1e-5.
        cparams.flash_attn_type = 1 if self._flash_attn else 0
        cparams.type_k = cparams.type_v = self._kv_type_id
        cparams.no_perf = True
        return lc.llama_init_from_model(self._model, cparams)

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        lc = _llama()
        if getattr(self, "_slots", None) is not None:
            self._slots.close()
            self._slots = None
        if getattr(self, "_batch_ok", False):
            lc.llama_batch_free(self._batch)
            self._batch_ok = False
        if getattr(self, "_ctx", None):
            lc.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_lora", None):  # after the context that uses it, before the model it belongs to
            lc.llama_adapter_lora_free(self._lora)
            self._lora = None
        if getattr(self, "_model", None):
            lc.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass

    # ---------------------------------------------------------------- metadata and text

    def metadata(self, key: str) -> str | None:
        lc = _llama()
        buf = ctypes.create_string_buffer(1 << 16)
        n = lc.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            lc.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        """llama.cpp's tokenizer; `add_special` adds BOS only where the GGUF says so.

        Special-token text (e.g. "<|im_start|>") is parsed as the special token, as Hugging Face
        tokenizers do by default.
        """
        lc = _llama()
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        return list(buf[:n])

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return self.detokenize_bytes(tokens, special=special).decode("utf-8", errors="replace")

    def detokenize_bytes(self, tokens: Sequence[int], *, special: bool = False) -> bytes:
        lc = _llama()
        if not tokens:
            return b""
        arr = (lc.llama_token * len(tokens))(*tokens)
        cap = 8 * len(tokens) + 32
        buf = ctypes.create_string_buffer(cap)
        n = lc.llama_detokenize(self._vocab, arr, len(tokens), buf, cap, not special, special)
        if n < 0:
            cap = -n + 1
            buf = ctypes.create_string_buffer(cap)
            n = lc.llama_detokenize(self._vocab, arr, len(tokens), buf, cap, not special, special)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(_llama().llama_vocab_is_eog(self._vocab, token))

    # ---------------------------------------------------------------- decoding primitives

    def _clear(self) -> None:
        _llama().llama_memory_clear(self._mem, True)
        self._seq0 = []

    def _decode(self, entries: list[tuple[int, int, Sequence[int], bool]]) -> None:
        """One llama_decode of (token, position, seq_ids, wants_logits) entries."""
        try:
            decode_entries(self._ctx, self._batch, entries)
        except RuntimeError:
            self._clear()
            raise
        self.tokens_evaluated += len(entries)

    def _logits_rows(self, n_rows: int) -> np.ndarray:
        """The logits of the last decode, one row per position that asked for them, in batch order."""
        return logits_rows(self._ctx, n_rows, self.n_vocab)
