"""Greedy generation with llama.cpp: one prompt at a time (reusing the cached prefix of the last one),
or many at once: in waves whose prompts share their few-shot prefix in the KV cache, or by
continuous batching over KV streams of their own when they share none (`_slots`). Built
on the engine's decoding primitives, see `_engine.LlamaCppEngine`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from posttrain import _progress
from posttrain.llamacpp import _loading


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
        lc = _loading.load_llama_cpp()
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
        while len(out) < max_tokens:
            tok = int(self._logits_rows(1)[0].argmax())
            if not self.take_greedy(out, tok, max_tokens, stop):
                break
            pos = len(prompt) + len(out) - 1
            self._decode([(tok, pos, (0,), True)])
            self._seq0.append(tok)
        return out

    def take_greedy(self, out: list[int], token: int, max_tokens: int, stop: Sequence[str]) -> bool:
        """Take the greedy `token` into `out`; False once the sequence has ended: at an end-of-generation
        token (not taken), at `max_tokens`, or with a stop string in the decoded text (stop text kept).
        The one stopping rule of every generation path: one at a time, waves and slots."""
        if self.is_eog(token):
            return False
        out.append(token)
        if len(out) >= max_tokens:
            return False
        if stop:
            # Only the tail can newly contain a stop string: decode a bounded window.
            tail = self.detokenize(out[-(max(len(s.encode()) for s in stop) + 8):])
            return not any(s and s in tail for s in stop)
        return True

    def generate_greedy_many(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_tokens: Sequence[int],
        stops: Sequence[Sequence[str]],
        max_parallel: int = 16,
    ) -> list[list[int]]:
        """`generate_greedy` for many prompts at once: up to `max_parallel` sequences advance one
        token each per llama_decode. Prompts that share a long prefix (fixed few-shot examples) go
        in waves that decode it once in the unified KV cache; others get a KV stream each, refilled
        as soon as a sequence ends (`_slots`). Same stopping rules as `generate_greedy`."""
        outputs: list[list[int]] = [[] for _ in prompts]
        todo = [i for i in range(len(prompts)) if max_tokens[i] > 0]
        for i in todo:
            need = len(prompts[i]) + max_tokens[i]
            if not prompts[i]:
                raise ValueError("an empty prompt cannot be continued")
            if need > self.n_ctx:
                raise ValueError(f"prompt ({len(prompts[i])}) + max_tokens ({max_tokens[i]}) exceeds n_ctx={self.n_ctx}")
        if not todo:
            return outputs
        order = sorted(todo, key=lambda i: list(prompts[i]))
        if not self._shares_prefix([prompts[i] for i in todo]):
            need = max(len(prompts[i]) + max_tokens[i] for i in todo)
            slots = self._generation_slots(len(todo), need, min(max_parallel, self.n_seq_max))
            # Longest first: the slots then end their work at about the same time.
            slots.generate(prompts, sorted(todo, key=lambda i: -(len(prompts[i]) + max_tokens[i])),
                           max_tokens, stops, outputs)
            return outputs
        width = max(1, min(max_parallel, self.n_seq_max))
        wave: list[int] = []
        common = 0
        for i in order:
            if wave:
                # The wave's common prefix takes its cells once, whatever the number of prompts.
                shared = _common_length(prompts[wave[0]], prompts[i], common)
                held = min(shared, min(len(prompts[j]) for j in (*wave, i)) - 1)  # as _generate_wave shares
                cells = held + sum(len(prompts[j]) - held + max_tokens[j] for j in (*wave, i))
                if len(wave) >= width or cells > self.n_ctx:
                    self._generate_wave(wave, prompts, max_tokens, stops, outputs)
                    wave = []
                else:
                    common = shared
            if not wave:
                common = len(prompts[i])
            wave.append(i)
        if wave:
            self._generate_wave(wave, prompts, max_tokens, stops, outputs)
        return outputs

    @staticmethod
    def _shares_prefix(prompts: Sequence[Sequence[int]]) -> bool:
        """Whether the prompts share a prefix (fixed few-shot examples) worth decoding once for all:
        at least half of the shortest prompt. Then waves in the unified cache pay for it once;
        otherwise each prompt gets a KV stream of its own (see _slots)."""
        if len(prompts) < 2:
            return False
        shortest = common = min(len(p) for p in prompts)
        for p in prompts[1:]:
            common = _common_length(prompts[0], p, common)
        return common * 2 >= shortest

    def _generation_slots(self, n_prompts: int, need: int, max_parallel: int):
        from posttrain.llamacpp._slots import GenerationSlots, slots_for

        n_slots = slots_for(self, n_prompts, need, max_parallel)
        if self._slots is None or not self._slots.fits(n_slots, need):
            if self._slots is not None:
                self._slots.close()
                self._slots = None
            self._slots = GenerationSlots(self, n_slots, need)
        return self._slots

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
            common = _common_length(first, prompts[i], common)
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
        while active:
            step: list[tuple[int, int, Sequence[int], bool]] = []
            still: list[int] = []
            for i in active:
                tok = int(rows[i].argmax())
                if not self.take_greedy(outputs[i], tok, max_tokens[i], stops[i]):
                    continue
                step.append((tok, len(prompts[i]) + len(outputs[i]) - 1, (seqs[i],), True))
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


def _common_length(a: Sequence[int], b: Sequence[int], at_most: int) -> int:
    n, top = 0, min(at_most, len(a), len(b))
    while n < top and a[n] == b[n]:
        n += 1
    return n
