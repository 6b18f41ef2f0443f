"""Filling a `llama_batch` and decoding it: shared by the engine's context and the generation slots."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from posttrain.llamacpp import _loading

# (token, position, sequence ids, wants logits)
Entry = tuple[int, int, Sequence[int], bool]


def decode_entries(ctx, batch, entries: Sequence[Entry]) -> None:
    """One llama_decode of `entries` into `ctx` through `batch` (which holds at least that many)."""
    lc = _loading.load_llama_cpp()
    for i, (tok, pos, seqs, want) in enumerate(entries):
        batch.token[i] = tok
        batch.pos[i] = pos
        batch.n_seq_id[i] = len(seqs)
        for j, s in enumerate(seqs):
            batch.seq_id[i][j] = s
        batch.logits[i] = want
    batch.n_tokens = len(entries)
    rc = lc.llama_decode(ctx, batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode failed with status {rc} for a batch of {len(entries)} tokens")


def logits_rows(ctx, n_rows: int, n_vocab: int) -> np.ndarray:
    """The logits of the last decode of `ctx`, one row per position that asked for them, in batch
    order. A view into llama.cpp's buffer: valid until the next decode."""
    ptr = _loading.load_llama_cpp().llama_get_logits(ctx)
    return np.ctypeslib.as_array(ptr, shape=(n_rows, n_vocab))
