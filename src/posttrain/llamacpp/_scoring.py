"""Scoring continuations with llama.cpp: the log-likelihood of each (context, continuation) request and
whether greedy decoding would have produced it.

`score_sequential` decodes one request at a time (the reference); `score_batched` packs many
sequences into each llama_decode, each distinct context evaluated once for all its endings, with
logits only at scored positions. Both build on the engine's decoding primitives (`_decode`,
`_logits_rows`, `_clear`, the KV memory `_mem`), see `_engine.LlamaCppEngine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from posttrain import _progress
from posttrain.llamacpp import _loading


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


class ScoringMixin:
    """The scoring half of `LlamaCppEngine` (which provides the attributes used here)."""

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
        lc = _loading.load_llama_cpp()
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
        lc = _loading.load_llama_cpp()
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
