"""F16's next-token log-probabilities over the whole vocabulary, stored compactly on disk for the KLD pass.

llama-perplexity's `--kl-divergence-base` idea: one uint16 per vocabulary entry per scored token,
linear between the row's top log-probability and `RANGE_NATS` below it (entries further down are
stored as "zero probability": e^-30 per token is < 1e-8 of the mass even for a 150k vocabulary).
Read back, a row is renormalised (log-softmax of the dequantised values), so F16 against itself
gives a KLD that is second order in the rounding step (≈ step² / 24, about 1e-8 nats at the widest
range) instead of first order, and a variant's KLD moves by far less than its standard error.

The rows are written and read with plain file I/O, one block at a time: a memory map would count
the whole file, page by page, in the process's resident memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import special

RANGE_NATS = 30.0
_LEVELS = 65534  # codes 1 … 65535 span the range; code 0 is "below the range"
_BLOCK_ROWS = 64


class BaseRows:
    """Append one chunk's (scored, vocab) log-probabilities at a time, then read them back by blocks.

    Kept exactly, in memory (a few numbers per scored token): F16's NLL of the next token and its top
    token, so perplexity, Δp and "same top" do not go through the uint16 rows.
    """

    def __init__(self, path: Path, n_chunks: int, scored: int, n_vocab: int):
        self.path, self.n_chunks, self.scored, self.n_vocab = path, n_chunks, scored, n_vocab
        self.nll = np.zeros((n_chunks, scored), dtype=np.float64)
        self.top = np.zeros((n_chunks, scored), dtype=np.int64)
        self._lo = np.zeros((n_chunks, scored), dtype=np.float64)
        self._step = np.zeros((n_chunks, scored), dtype=np.float64)
        self._written = 0
        self._file = open(path, "wb")

    @classmethod
    def create(cls, path: Path, n_chunks: int, scored: int, n_vocab: int) -> BaseRows:
        return cls(Path(path), n_chunks, scored, n_vocab)

    @property
    def nbytes(self) -> int:
        return self.n_chunks * self.scored * self.n_vocab * 2

    def append(self, logprobs: np.ndarray, next_tokens: np.ndarray) -> None:
        """One chunk: `logprobs` (scored, vocab), natural log; `next_tokens` (scored,) the text's next tokens."""
        c = self._written
        if logprobs.shape != (self.scored, self.n_vocab):
            raise ValueError(f"chunk of shape {logprobs.shape}, expected {(self.scored, self.n_vocab)}")
        self.nll[c] = -logprobs[np.arange(self.scored), next_tokens]
        self.top[c] = logprobs.argmax(axis=1)
        for start in range(0, self.scored, _BLOCK_ROWS):
            block = logprobs[start:start + _BLOCK_ROWS]
            hi = block.max(axis=1)
            lo = np.maximum(block.min(axis=1), hi - RANGE_NATS)
            step = (hi - lo) / _LEVELS
            safe = np.where(step > 0, step, 1.0)[:, None]  # a flat row: every entry at `lo`
            codes = np.rint((block - lo[:, None]) / safe) + 1
            codes = np.where(block < lo[:, None], 0, np.clip(codes, 1, _LEVELS + 1)).astype("<u2")
            self._file.write(codes.tobytes())
            self._lo[c, start:start + len(block)] = lo
            self._step[c, start:start + len(block)] = step
        self._written += 1

    def finish(self) -> None:
        self._file.close()
        if self._written != self.n_chunks:
            raise ValueError(f"{self._written} chunks written, {self.n_chunks} expected")

    def blocks(self, chunk: int, block_rows: int = _BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, renormalised float64 log-probabilities of up to `block_rows` rows) of one chunk."""
        row_bytes = self.n_vocab * 2
        with open(self.path, "rb") as f:
            f.seek(chunk * self.scored * row_bytes)
            for start in range(0, self.scored, block_rows):
                n = min(block_rows, self.scored - start)
                codes = np.frombuffer(f.read(n * row_bytes), dtype="<u2").reshape(n, self.n_vocab)
                lo = self._lo[chunk, start:start + n, None]
                step = self._step[chunk, start:start + n, None]
                with np.errstate(divide="ignore"):
                    values = np.where(codes > 0, lo + (codes.astype(np.float64) - 1) * step, -np.inf)
                yield start, values - special.logsumexp(values, axis=1, keepdims=True)
