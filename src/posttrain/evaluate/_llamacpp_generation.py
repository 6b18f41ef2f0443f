"""Greedy generation with llama.cpp: one prompt at a time (reusing the cached prefix of the last one),
or many at once in waves whose prompts share their few-shot prefix in the KV cache. Built on the
engine's decoding primitives, see `_llamacpp_engine.LlamaCppEngine`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from posttrain import _native, _progress


class GenerationMixin:
    """The generation half of `LlamaCppEngine` (which provides the attributes used here)."""

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
        lc = _native.load_llama_cpp()
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
