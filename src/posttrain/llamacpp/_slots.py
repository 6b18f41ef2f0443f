"""Greedy generation by continuous batching over per-sequence KV streams.

Why a second context: the engine's own context has one unified KV buffer, which is what scoring
needs (a context token shared by every ending's sequence) and what prompts with a common few-shot
prefix need. But with a unified buffer every token attends over every cell in use, so a wave of W
prompts that share nothing costs W² in attention: for GSM8K (5 random shots per question, ~750
prompt tokens) attention outweighed the weights themselves. Here each sequence has its own stream
(llama.cpp's `kv_unified = false`), and a slot is refilled with the next prompt the moment its
sequence ends, instead of idling until the longest sequence of a wave is done. A new prompt's
tokens ride in the same `llama_decode` as the other slots' next tokens, up to n_batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from posttrain import _progress
from posttrain.llamacpp import _loading
from posttrain.llamacpp._batch import Entry, decode_entries, logits_rows

# KV memory the slots may take (their number comes from the caller's max_parallel, 16 by default:
# enough sequences to amortize reading the weights once per step on a CPU).
SLOT_KV_BUDGET_BYTES = 2 << 30
_KV_BYTES = {0: 4, 1: 2, 8: 34 / 32}  # bytes per element of the KV cache types the engine offers


@dataclass
class _Active:
    item: int
    fed: int = 0  # prompt tokens decoded so far
    out: list[int] = field(default_factory=list)
    next_token: int | None = None  # chosen, not yet decoded


class GenerationSlots:
    """A context of `n_slots` independent KV streams of `n_ctx_seq` cells each on `engine`'s model."""

    def __init__(self, engine, n_slots: int, n_ctx_seq: int) -> None:
        lc = _loading.load_llama_cpp()
        self.engine = engine
        # llama.cpp sizes each stream in multiples of 256 cells; asking for that avoids its warning.
        n_ctx_seq = -(-n_ctx_seq // 256) * 256
        self.n_slots, self.n_ctx_seq = n_slots, n_ctx_seq
        self._ctx = engine._new_context(n_slots * n_ctx_seq, n_slots, unified=False)
        if not self._ctx:
            raise MemoryError(f"llama.cpp could not create a generation context of {n_slots} x {n_ctx_seq} cells")
        if not engine._attach_lora(self._ctx):
            self.close()
            raise RuntimeError("llama.cpp refused to apply the LoRA adapter to the generation context")
        self.n_ctx_seq = int(lc.llama_n_ctx_seq(self._ctx))  # what llama.cpp made is what bounds a sequence
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(engine.n_batch, 0, 1)

    def close(self) -> None:
        lc = _loading.load_llama_cpp()
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lc.llama_free(self._ctx)
            self._ctx = None

    def fits(self, n_slots: int, n_ctx_seq: int) -> bool:
        return self.n_slots >= n_slots and self.n_ctx_seq >= n_ctx_seq

    def generate(self, prompts: Sequence[Sequence[int]], order: Sequence[int], max_tokens: Sequence[int],
                 stops: Sequence[Sequence[str]], outputs: list[list[int]]) -> None:
        """Greedy continuations of `prompts[i]` for i in `order`, written to `outputs[i]`; the
        stopping rules of `LlamaCppEngine.generate_greedy`."""
        lc = _loading.load_llama_cpp()
        engine = self.engine
        lc.llama_memory_clear(self._mem, True)
        queue = deque(order)
        free = list(range(self.n_slots - 1, -1, -1))
        active: dict[int, _Active] = {}
        while queue or active:
            while free and queue:
                slot = free.pop()
                lc.llama_memory_seq_rm(self._mem, slot, -1, -1)
                active[slot] = _Active(queue.popleft())
            entries: list[Entry] = []
            wants: list[int] = []  # the slot of each logits row, in batch order
            for slot, a in active.items():  # every generating slot advances by one token...
                if a.next_token is not None:
                    entries.append((a.next_token, len(prompts[a.item]) + len(a.out) - 1, (slot,), True))
                    wants.append(slot)
                    a.next_token = None
            for slot, a in active.items():  # ...and prompts fill the rest of the batch
                prompt = prompts[a.item]
                room = engine.n_batch - len(entries)
                if a.fed >= len(prompt) or room <= 0:
                    continue
                end = min(len(prompt), a.fed + room)
                entries.extend((prompt[p], p, (slot,), p == len(prompt) - 1) for p in range(a.fed, end))
                a.fed = end
                if end == len(prompt):
                    wants.append(slot)
            decode_entries(self._ctx, self._batch, entries)
            engine.tokens_evaluated += len(entries)
            rows = logits_rows(self._ctx, len(wants), engine.n_vocab)
            for r, slot in enumerate(wants):
                a = active[slot]
                token = int(rows[r].argmax())
                if engine.take_greedy(a.out, token, max_tokens[a.item], stops[a.item]):
                    a.next_token = token
                else:
                    outputs[a.item] = a.out
                    del active[slot]
                    free.append(slot)
                    _progress.advance()

def kv_bytes_per_cell(engine) -> int:
    """Bytes of K and V one token takes in the cache, over all layers (from the model's shape)."""
    lc = _loading.load_llama_cpp()
    model = engine._model
    n_head = max(1, int(lc.llama_model_n_head(model)))
    head_dim = int(lc.llama_model_n_embd(model)) // n_head
    per_layer = 2 * int(lc.llama_model_n_head_kv(model)) * head_dim
    return int(int(lc.llama_model_n_layer(model)) * per_layer * _KV_BYTES.get(engine._kv_type_id, 2))


def slots_for(engine, n_prompts: int, n_ctx_seq: int, max_parallel: int) -> int:
    """How many slots: up to `max_parallel` and the prompts at hand, within the KV budget."""
    by_memory = SLOT_KV_BUDGET_BYTES // max(1, n_ctx_seq * kv_bytes_per_cell(engine))
    return max(1, min(max_parallel, n_prompts, by_memory))
