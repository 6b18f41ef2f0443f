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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posttrain import _native, _progress
from posttrain.errors import PosttrainError

# Largest number of sequences one context holds; llama.cpp's own limit is 256 (LLAMA_MAX_SEQ).
MAX_SEQUENCES = 64

# KV cache element types (ggml_type values). llama.cpp's default is f16; f32 removes the cache's
# rounding, which is what separates an F32 GGUF from the float32 Hugging Face reference.
_KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}


@dataclass(frozen=True)
class Scored:
    """Log-likelihood of one continuation and whether greedy decoding would have produced it."""

    logprob: float
    is_greedy: bool


@dataclass(frozen=True)
class ScoreRequest:
    """Tokens to condition on and tokens to score; `context` is never empty."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def _llama():
    lc = _native.load_llama_cpp()
    import llama_cpp._logger  # noqa: F401  (lc._logger below)

    return lc


class LlamaCppEngine:
    """Owns one loaded GGUF model and one llama.cpp context; not thread-safe."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int | None = None,
        n_ctx_cap: int = 8192,
        n_batch: int = 512,
        n_ubatch: int = 512,
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
        # No extra CPU buffer types (the AMX crash) and the GPU layers asked for: see posttrain._native.
        mparams = _native.model_params(n_gpu_layers)
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

        self.n_threads = n_threads or _native.cpu_threads()
        # Default KV size: the trained context (capped), and at least one full batch.
        self.n_ctx = int(n_ctx) if n_ctx else max(min(self.n_ctx_train or 2048, n_ctx_cap), n_batch)
        self.n_batch = int(min(n_batch, self.n_ctx))
        self.n_seq_max = int(max(1, min(n_seq_max, 256)))
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = int(min(n_ubatch, self.n_batch))
        cparams.n_seq_max = self.n_seq_max
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        # One KV buffer shared by all sequences: a context token can then belong to every ending's
        # sequence at once (no copies), and each sequence may use the whole n_ctx.
        cparams.kv_unified = True
        # llama.cpp's default (auto) turns flash attention on; on CPU with an F16 KV cache it moved
        # F32 log-likelihoods ~1e-3 away from the reference per few tokens, plain attention ~1e-5.
        cparams.flash_attn_type = 1 if flash_attn else 0
        kv = _KV_TYPES.get(kv_type.lower())
        if kv is None:
            self.close()
            raise PosttrainError(f"unknown kv_type {kv_type!r}", remedy=f"use one of {', '.join(_KV_TYPES)}")
        cparams.type_k = cparams.type_v = kv
        cparams.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise PosttrainError(
                f"llama.cpp could not create a context for {path} (n_ctx={self.n_ctx})",
                remedy="lower n_ctx / n_batch, or free memory",
            )
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
        adapters = (lc.llama_adapter_lora_p_ctypes * 1)(self._lora)
        scales = (ctypes.c_float * 1)(scale)
        if lc.llama_set_adapters_lora(self._ctx, adapters, 1, scales) != 0:
            self.close()
            raise PosttrainError(f"llama.cpp refused to apply the LoRA adapter {path}")
        self.lora_path, self.lora_scale = path, scale

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        lc = _llama()
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
        lc = _llama()
        b = self._batch
        for i, (tok, pos, seqs, want) in enumerate(entries):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = len(seqs)
            for j, s in enumerate(seqs):
                b.seq_id[i][j] = s
            b.logits[i] = want
        b.n_tokens = len(entries)
        rc = lc.llama_decode(self._ctx, b)
        if rc != 0:
            self._clear()
            raise RuntimeError(f"llama_decode failed with status {rc} for a batch of {len(entries)} tokens")
        self.tokens_evaluated += len(entries)

    def _logits_rows(self, n_rows: int) -> np.ndarray:
        """The logits of the last decode, one row per position that asked for them, in batch order."""
        lc = _llama()
        ptr = lc.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_rows, self.n_vocab))

    @staticmethod
    def _score_rows(
        logits: np.ndarray, row_idx: Sequence[int], targets: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per (row of `logits`, target): log-softmax at the target token and whether the target is the argmax.

        exp runs in float32 after subtracting the row maximum (every term ≤ 1), the sum and the
        log in float64, so the normaliser loses nothing that matters over a 50k–250k vocabulary.
        """
        tgt = np.asarray(targets, dtype=np.int64)
        out_lp = np.empty(len(tgt), dtype=np.float64)
        out_greedy = np.empty(len(tgt), dtype=bool)
        step = 64
        for a in range(0, len(tgt), step):
            block = logits[np.asarray(row_idx[a : a + step], dtype=np.int64)]
            mx = block.max(axis=1)
            sums = np.exp(block - mx[:, None]).sum(axis=1, dtype=np.float64)
            t = tgt[a : a + step]
            picked = block[np.arange(len(t)), t].astype(np.float64)
            out_lp[a : a + step] = picked - mx.astype(np.float64) - np.log(sums)
            out_greedy[a : a + step] = block.argmax(axis=1) == t
        return out_lp, out_greedy

    # ---------------------------------------------------------------- scoring: sequential path

    def score_sequential(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        """One request per decode, in the given order, reusing the longest cached prefix.

        Slow on small models but simple: the reference the batched path is checked against.
        """
        lc = _llama()
        results: list[Scored] = []
        for req in requests:
            ctx, cont = list(req.context), list(req.continuation)
            seq = ctx + cont[:-1]
            first_scored = len(ctx) - 1
            if len(seq) > self.n_ctx:
                raise ValueError(f"sequence of {len(seq)} tokens does not fit n_ctx={self.n_ctx}")
            keep = 0
            for a, b in zip(self._seq0, seq):
                if a != b:
                    break
                keep += 1
            keep = min(keep, first_scored)  # the position whose logits we need must be decoded now
            lc.llama_memory_seq_rm(self._mem, 0, keep, -1)
            self._seq0 = self._seq0[:keep]
            lps: list[float] = []
            greedy = True
            for start in range(keep, len(seq), self.n_batch):
                chunk = range(start, min(start + self.n_batch, len(seq)))
                entries = [(seq[p], p, (0,), p >= first_scored) for p in chunk]
                self._decode(entries)
                self._seq0.extend(seq[p] for p in chunk)
                wanted = [p for p in chunk if p >= first_scored]
                if wanted:
                    targets = [seq[p + 1] if p + 1 < len(seq) else cont[-1] for p in wanted]
                    lp, gr = self._score_rows(self._logits_rows(len(wanted)), range(len(wanted)), targets)
                    lps.extend(lp.tolist())
                    greedy = greedy and bool(gr.all())
            results.append(Scored(float(sum(lps)), greedy))
            _progress.advance()
        return results

    # ---------------------------------------------------------------- scoring: batched path

    def score_batched(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        """Many sequences per llama_decode; each distinct context is evaluated once per batch.

        Requests sharing a context form a group: the context tokens are put in the batch once,
        tagged with the sequence id of every ending, and each ending follows with its own id.
        Groups are packed into batches of up to n_batch tokens and n_seq_max sequences; the KV
        cache is cleared between batches (so attention never spans unrelated old cells).
        Results come back in the order of `requests`.
        """
        # Identical requests are scored once; the batch layout depends only on the set of distinct
        # requests (groups and endings in sorted order), so the numbers do not depend on the order
        # requests arrive in (attention sums over KV cells in layout order).
        distinct = sorted(set(requests), key=lambda r: (r.context, r.continuation))
        by_req = dict(zip(distinct, self._score_sorted(distinct)))
        return [by_req[r] for r in requests]

    def _score_sorted(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.context, []).append(i)

        results: list[Scored | None] = [None] * len(requests)
        self._clear()
        # First-fit decreasing: groups, largest first, go into the first batch with room for their
        # tokens and sequences. Batches then run nearly full (llama.cpp's speed per token falls
        # steeply with smaller batches) whatever the mix of context lengths.
        sizes = {ctx: len(ctx) + sum(len(requests[i].continuation) - 1 for i in idxs) for ctx, idxs in groups.items()}
        bins: list[list] = []  # [tokens, sequences, [contexts]]
        for ctx in sorted(groups, key=lambda c: (-sizes[c], c)):
            idxs = groups[ctx]
            if sizes[ctx] > self.n_batch or len(idxs) > self.n_seq_max:
                # Does not fit one batch: its context goes through alone, once, in chunks.
                self._score_long_group(ctx, idxs, requests, results)
                continue
            for b in bins:
                if b[0] + sizes[ctx] <= self.n_batch and b[1] + len(idxs) <= self.n_seq_max:
                    break
            else:
                b = [0, 0, []]
                bins.append(b)
            b[0] += sizes[ctx]
            b[1] += len(idxs)
            b[2].append(ctx)
        for _, _, contexts in bins:
            self._run_packed([(ctx, groups[ctx]) for ctx in contexts], requests, results)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _score_long_group(
        self,
        ctx: tuple[int, ...],
        idxs: list[int],
        requests: Sequence[ScoreRequest],
        results: list[Scored | None],
    ) -> None:
        """A context longer than a batch (or with more endings than sequences): evaluate it once
        into sequence 0, share its KV cells with the endings' sequences (`llama_memory_seq_cp` on a
        unified cache adds sequence ids to cells, it copies no data), then decode the endings in
        as few batches as fit."""
        lc = _llama()
        self._clear()
        for start in range(0, len(ctx), self.n_batch):
            chunk = range(start, min(start + self.n_batch, len(ctx)))
            self._decode([(ctx[p], p, (0,), p == len(ctx) - 1) for p in chunk])
        last_ctx_row = np.array(self._logits_rows(1)[0])  # survives the next decodes

        lp0, g0 = self._score_rows(last_ctx_row[None, :], [0] * len(idxs), [requests[i].continuation[0] for i in idxs])
        scores: dict[int, list[float]] = {i: [float(v)] for i, v in zip(idxs, lp0)}
        greedy: dict[int, bool] = {i: bool(g) for i, g in zip(idxs, g0)}

        # Rounds of at most n_seq_max - 1 endings (sequence 0 keeps the bare context) whose tokens
        # fit beside the context in the KV cache.
        rounds: list[list[int]] = [[]]
        room = self.n_ctx - len(ctx)
        used = 0
        for i in idxs:
            n = len(requests[i].continuation) - 1
            if rounds[-1] and (len(rounds[-1]) >= self.n_seq_max - 1 or used + n > room):
                rounds.append([])
                used = 0
            rounds[-1].append(i)
            used += n
        for members in rounds:
            flat: list[tuple[int, int, Sequence[int], bool]] = []
            owners: list[tuple[int, int]] = []
            for k, i in enumerate(members, start=1):
                lc.llama_memory_seq_cp(self._mem, 0, k, -1, -1)
                cont = requests[i].continuation
                for j, tok in enumerate(cont[:-1]):
                    flat.append((tok, len(ctx) + j, (k,), True))
                    owners.append((i, cont[j + 1]))
            for start in range(0, len(flat), self.n_batch):
                part = flat[start : start + self.n_batch]
                who = owners[start : start + self.n_batch]
                self._decode(part)
                lp, gr = self._score_rows(self._logits_rows(len(part)), range(len(part)), [t for _, t in who])
                for (i, _), v, g in zip(who, lp.tolist(), gr.tolist()):
                    scores[i].append(v)
                    greedy[i] = greedy[i] and g
            for k in range(1, len(members) + 1):
                lc.llama_memory_seq_rm(self._mem, k, -1, -1)
        for i in idxs:
            results[i] = Scored(float(sum(scores[i])), greedy[i])
        _progress.advance(len(idxs))
        self._clear()

    def _run_packed(
        self,
        units: list[tuple[tuple[int, ...], list[int]]],
        requests: Sequence[ScoreRequest],
        results: list[Scored | None],
    ) -> None:
        entries: list[tuple[int, int, Sequence[int], bool]] = []
        # Per logits row (batch order): the (request index, target token) pairs it scores. The
        # last context position predicts the first token of every ending, so it has several.
        rows: list[list[tuple[int, int]]] = []
        seq = 0
        for ctx, idxs in units:
            seq_ids = tuple(range(seq, seq + len(idxs)))
            for p, tok in enumerate(ctx[:-1]):
                entries.append((tok, p, seq_ids, False))
            entries.append((ctx[-1], len(ctx) - 1, seq_ids, True))
            rows.append([(i, requests[i].continuation[0]) for i in idxs])
            for k, i in enumerate(idxs):
                cont = requests[i].continuation
                for j, tok in enumerate(cont[:-1]):
                    entries.append((tok, len(ctx) + j, (seq_ids[k],), True))
                    rows.append([(i, cont[j + 1])])
            seq += len(idxs)
        self._decode(entries)
        logits = self._logits_rows(len(rows))

        row_idx = [r for r, pairs in enumerate(rows) for _ in pairs]
        owners = [i for pairs in rows for i, _ in pairs]
        targets = [t for pairs in rows for _, t in pairs]
        lp, greedy = self._score_rows(logits, row_idx, targets)
        sums: dict[int, float] = {}
        flags: dict[int, bool] = {}
        for i, v, g in zip(owners, lp.tolist(), greedy.tolist()):
            sums[i] = sums.get(i, 0.0) + v
            flags[i] = flags.get(i, True) and g
        for i in sums:
            results[i] = Scored(sums[i], flags[i])
        _progress.advance(len(sums))
        self._clear()

    # ---------------------------------------------------------------- generation

    def generate_greedy(
        self,
        prompt: Sequence[int],
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
    ) -> list[int]:
        """Greedy continuation of `prompt`, ending at an end-of-generation token, a stop string
        in the decoded text, or `max_tokens`. Returns the generated tokens (stop text included;
        the caller cuts it)."""
        lc = _llama()
        prompt = list(prompt)
        if len(prompt) + max_tokens > self.n_ctx:
            raise ValueError(
                f"prompt ({len(prompt)}) + max_tokens ({max_tokens}) exceeds n_ctx={self.n_ctx}"
            )
        keep = 0
        for a, b in zip(self._seq0, prompt):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(prompt) - 1)
        lc.llama_memory_seq_rm(self._mem, 0, keep, -1)
        self._seq0 = self._seq0[:keep]
        for start in range(keep, len(prompt), self.n_batch):
            chunk = range(start, min(start + self.n_batch, len(prompt)))
            self._decode([(prompt[p], p, (0,), p == len(prompt) - 1) for p in chunk])
            self._seq0.extend(prompt[p] for p in chunk)
        out: list[int] = []
        longest_stop = max((len(s.encode()) for s in stop), default=0)
        while len(out) < max_tokens:
            row = self._logits_rows(1)[0]
            tok = int(row.argmax())
            if self.is_eog(tok):
                break
            out.append(tok)
            if stop:
                # Only the tail can newly contain a stop string; decode a bounded window.
                tail = self.detokenize(out[-(longest_stop + 8) :])
                if any(s and s in tail for s in stop):
                    break
            if len(out) >= max_tokens:
                break
            pos = len(prompt) + len(out) - 1
            self._decode([(tok, pos, (0,), True)])
            self._seq0.append(tok)
        return out

    def generate_greedy_many(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_tokens: Sequence[int],
        stops: Sequence[Sequence[str]],
        max_parallel: int = 16,
    ) -> list[list[int]]:
        """`generate_greedy` for many prompts at once: up to `max_parallel` sequences advance one
        token each per llama_decode, and the prompts of a wave share their common prefix (few-shot
        examples) in the KV cache. Same stopping rules as `generate_greedy`."""
        outputs: list[list[int]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))
        width = max(1, min(max_parallel, self.n_seq_max))
        wave: list[int] = []
        cells = 0
        for i in order:
            if max_tokens[i] <= 0:
                continue
            need = len(prompts[i]) + max_tokens[i]
            if need > self.n_ctx:
                raise ValueError(f"prompt ({len(prompts[i])}) + max_tokens ({max_tokens[i]}) exceeds n_ctx={self.n_ctx}")
            if wave and (len(wave) >= width or cells + need > self.n_ctx):
                self._generate_wave(wave, prompts, max_tokens, stops, outputs)
                wave, cells = [], 0
            wave.append(i)
            cells += need
        if wave:
            self._generate_wave(wave, prompts, max_tokens, stops, outputs)
        return outputs

    def _generate_wave(
        self,
        wave: list[int],
        prompts: Sequence[Sequence[int]],
        max_tokens: Sequence[int],
        stops: Sequence[Sequence[str]],
        outputs: list[list[int]],
    ) -> None:
        self._clear()
        seqs = {i: k for k, i in enumerate(wave)}
        # The prefix common to every prompt of the wave is decoded once, in all their sequences.
        first = list(prompts[wave[0]])
        common = len(first)
        for i in wave[1:]:
            p = prompts[i]
            n = 0
            while n < min(common, len(p)) and p[n] == first[n]:
                n += 1
            common = n
        common = min(common, min(len(prompts[i]) for i in wave) - 1)
        all_seqs = tuple(range(len(wave)))
        entries: list[tuple[int, int, Sequence[int], bool]] = [(first[p], p, all_seqs, False) for p in range(common)]
        last_of: list[int] = []  # wave members in the order their last prompt token appears
        for i in wave:
            p = prompts[i]
            for pos in range(common, len(p)):
                entries.append((p[pos], pos, (seqs[i],), pos == len(p) - 1))
            last_of.append(i)
        rows: dict[int, np.ndarray] = {}
        pending = list(last_of)
        for start in range(0, len(entries), self.n_batch):
            part = entries[start : start + self.n_batch]
            self._decode(part)
            n_out = sum(1 for e in part if e[3])
            if n_out:
                logits = self._logits_rows(n_out)
                for r in range(n_out):
                    rows[pending.pop(0)] = np.array(logits[r])

        active = list(wave)
        longest = {i: max((len(s.encode()) for s in stops[i]), default=0) for i in wave}
        while active:
            step: list[tuple[int, int, Sequence[int], bool]] = []
            still: list[int] = []
            for i in active:
                tok = int(rows[i].argmax())
                out = outputs[i]
                if self.is_eog(tok):
                    continue
                out.append(tok)
                if len(out) >= max_tokens[i]:
                    continue
                if stops[i]:
                    tail = self.detokenize(out[-(longest[i] + 8) :])
                    if any(s and s in tail for s in stops[i]):
                        continue
                step.append((tok, len(prompts[i]) + len(out) - 1, (seqs[i],), True))
                still.append(i)
            if not step:
                break
            self._decode(step)
            logits = self._logits_rows(len(step))
            for r, i in enumerate(still):
                rows[i] = np.array(logits[r])
            active = still
        _progress.advance(len(wave))
        self._clear()
