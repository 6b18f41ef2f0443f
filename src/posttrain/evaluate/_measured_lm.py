"""`MeasuredLM`: every backend wrapped once, to count the tokens it evaluates and to strip reasoning
(`<think>…</think>`, posttrain._thinking) from generations before lm-eval's filters score them.

Only a sha256 of what was stripped is kept (so two runs can be told apart, and nothing of the
reasoning text is stored). The stripping sits in a thin LM wrapper around the real backend, so it
works the same for every backend (llama.cpp, hf, endpoint, Ollama) and lm-eval's own filters
(GSM8K answer extraction, …) see exactly the text a user would get as the answer.
"""

from __future__ import annotations

import json

from lm_eval.api.model import LM

from posttrain import _progress
from posttrain._thinking import DEFAULT_THINK_PATTERNS, strip_think  # noqa: F401  (re-exported)

def request_key(args: tuple) -> str:
    """Identifies one generate_until request (context + generation kwargs) in lm-eval's samples."""
    return json.dumps([args[0], args[1] if len(args) > 1 else None], sort_keys=True, default=str)


class MeasuredLM(LM):
    """Delegates to the real backend; strips reasoning from generations and counts the tokens handled."""

    def __init__(self, inner: LM, think_patterns: list[str] | None = None):
        super().__init__()
        self.inner = inner
        self.think_patterns = think_patterns
        self.think_sha256: dict[str, str] = {}
        self.tokens = 0
        self.requests = 0
        self._seen_contexts: set[str] = set()

    def __getattr__(self, name: str):
        # Everything lm-eval asks of the model beyond the three request types (tokenizer info,
        # model info, chat templates) is the real backend's.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def rank(self) -> int:
        return self.inner.rank

    @property
    def world_size(self) -> int:
        return self.inner.world_size

    @property
    def work_tokens(self) -> int:
        """Tokens the backend evaluated: its own count when it keeps one (posttrain-llamacpp), else ours."""
        native = getattr(self.inner, "tokens_evaluated", None)
        return int(native) if isinstance(native, int) else self.tokens

    def _count(self, text: str) -> int:
        if isinstance(getattr(self.inner, "tokens_evaluated", None), int):
            return 0  # the backend counts what it really evaluated; do not tokenize twice
        counter = getattr(self.inner, "tok_encode", None)
        if counter is None:
            return 0
        try:
            return len(counter(text))
        except Exception:  # noqa: BLE001 - a count is a nicety, never a reason to fail an evaluation
            return 0

    def _bill_context(self, context: str) -> None:
        # Each distinct context is counted once: that is the work a prefix-reusing backend does.
        if context not in self._seen_contexts:
            self._seen_contexts.add(context)
            self.tokens += self._count(context)

    def loglikelihood(self, requests):
        with _progress.work(len(requests)):
            out = self.inner.loglikelihood(requests)
        for req in requests:
            context, continuation = req.args[0], req.args[1]
            self._bill_context(context)
            self.tokens += self._count(continuation)
        self.requests += len(requests)
        return out

    def loglikelihood_rolling(self, requests):
        with _progress.work(len(requests)):
            out = self.inner.loglikelihood_rolling(requests)
        for req in requests:
            self.tokens += self._count(req.args[0])
        self.requests += len(requests)
        return out

    def generate_until(self, requests):
        with _progress.work(len(requests)):
            raw = self.inner.generate_until(requests)
        out = []
        for req, text in zip(requests, raw, strict=True):
            kept, digest = strip_think(text, self.think_patterns)
            if digest is not None:
                self.think_sha256[request_key(req.args)] = digest
            self._bill_context(req.args[0])
            self.tokens += self._count(text)
            out.append(kept)
        self.requests += len(requests)
        return out
