"""lm-eval model backend `posttrain-llamacpp`: a GGUF scored in-process through llama.cpp.

Usage (Python or CLI once `posttrain.evaluate` is imported):
    lm_eval --model posttrain-llamacpp --model_args model=model-Q4_K_M.gguf,n_threads=8 ...

Tokenisation follows lm-eval's `hf` backend exactly (`TemplateLM._encode_pair`: trailing context
whitespace moves onto the continuation, continuation tokens = tokens(context+continuation) minus
tokens(context); BOS as the GGUF's `tokenizer.ggml.add_bos_token` says; an empty context is
conditioned on BOS, or EOS where the model has none), and so does truncation (contexts longer
than `max_length` lose tokens on the left). This is what lm-eval's `gguf` backend against a
llama.cpp server cannot give: for models without BOS that server shifts prompt log-probs by one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from posttrain import _progress
from posttrain.errors import PosttrainError
from posttrain.llamacpp import (
    MAX_SEQUENCES,
    LlamaCppEngine,
    ScoreRequest,
)

log = logging.getLogger(__name__)

MODEL_NAME = "posttrain-llamacpp"

# Without an explicit max_length, lm-eval's hf backend uses the model's trained context; so do we,
# but cap it so that a 128k-context model does not allocate a 128k KV cache to score MMLU.
DEFAULT_MAX_LENGTH_CAP = 8192


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


@register_model(MODEL_NAME)
class LlamaCppLM(TemplateLM):
    """A GGUF file evaluated in-process; see the module docstring.

    model_args: `model` (path to the .gguf; `pretrained` is accepted as an alias), `max_length`
    (tokens of context + continuation, default the GGUF's trained context capped at 8192),
    `n_ctx` (KV cache size, default max(max_length, n_batch)), `n_batch` (tokens per llama_decode,
    default 512: one micro-batch, so attention never spans more than 512 cells), `n_ubatch` (default: the machine profile's, 256 where none was measured; see docs/llamacpp-backend.md), `n_seq_max` (sequences per decode, 64), `n_threads`, `n_gpu_layers`
    (default: every layer on a build that offloads, else 0; -1 all),
    `max_gen_toks` (default for generation when a task sets none, 256), `batched` (false: score one
    request per decode, the simple reference path), `flash_attn` (false), `kv_type` (KV cache type: f16 as llama.cpp's default, f32, q8_0), `seed` (recorded;
    decoding is greedy), `verbose`, `lora` (a GGUF LoRA applied to the model, times `lora_scale`).
    """

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = None,
        max_length: int | None = None,
        n_ctx: int | None = None,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_seq_max: int = MAX_SEQUENCES,
        n_threads: int | None = None,
        n_gpu_layers: int | str | None = None,
        max_gen_toks: int = 256,
        batched: bool | str = True,
        flash_attn: bool | str = False,
        kv_type: str = "f16",
        seed: int = 0,
        verbose: bool | str = False,
        lora: str | None = None,
        lora_scale: float | str = 1.0,
        # lm-eval passes these to every backend; batching here is by tokens, not requests.
        batch_size: Any = None,
        max_batch_size: Any = None,
        device: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        path = model or pretrained
        if not path:
            raise PosttrainError(
                f"{MODEL_NAME} needs the GGUF file to evaluate",
                remedy="pass --model_args model=/path/to/model.gguf",
            )
        if kwargs:
            log.warning("%s ignores unknown model_args: %s", MODEL_NAME, ", ".join(sorted(kwargs)))
        n_batch = int(n_batch)
        if n_ctx:
            kv_size: int | None = int(n_ctx)
        elif max_length:
            kv_size = max(int(max_length), n_batch)
        else:
            kv_size = None  # the engine sizes it from the GGUF's trained context
        self.engine = LlamaCppEngine(
            path,
            n_ctx=kv_size,
            n_ctx_cap=DEFAULT_MAX_LENGTH_CAP,
            n_batch=n_batch,
            n_ubatch=int(n_ubatch) if n_ubatch else None,
            n_threads=int(n_threads) if n_threads else None,
            n_gpu_layers=None if n_gpu_layers in (None, "") else int(n_gpu_layers),
            n_seq_max=int(n_seq_max),
            flash_attn=_as_bool(flash_attn),
            kv_type=str(kv_type),
            verbose=_as_bool(verbose),
            lora_path=lora or None,
            lora_scale=float(lora_scale),
        )
        self._max_length = (
            int(max_length) if max_length else min(self.engine.n_ctx_train or 2048, DEFAULT_MAX_LENGTH_CAP, self.engine.n_ctx)
        )
        if self._max_length > self.engine.n_ctx:
            raise PosttrainError(
                f"max_length={self._max_length} exceeds n_ctx={self.engine.n_ctx}",
                remedy="raise n_ctx or lower max_length",
            )
        self.model_path = Path(path)
        self._max_gen_toks = int(max_gen_toks)
        self.batched = _as_bool(batched)
        self.seed = int(seed)
        bos = self.engine.bos_id
        self._bos_text = self.engine.detokenize([bos], special=True) if bos is not None else None
        eos = self.engine.eos_id
        self._eos_text = self.engine.detokenize([eos], special=True) if eos is not None else None
        self._warned_sampling = False

    # ------------------------------------------------------------------ properties lm-eval uses

    @property
    def eot_token_id(self) -> int:
        if self.engine.eos_id is None:
            raise PosttrainError(f"{self.model_path} has no EOS token in its vocabulary")
        return self.engine.eos_id

    @property
    def prefix_token_id(self) -> int:
        # As the hf backend: BOS where the vocabulary has one, else EOS.
        return self.engine.bos_id if self.engine.bos_id is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokens_evaluated(self) -> int:
        """Tokens put through llama_decode so far (context reuse makes this less than the naive bill)."""
        return self.engine.tokens_evaluated

    @property
    def tokenizer_name(self) -> str:
        return self.model_path.name

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if chat_template is False or chat_template is None:
            return None
        return self.engine.metadata("tokenizer.chat_template") or None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render with the GGUF's own `tokenizer.chat_template` (Jinja), as llama.cpp does."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.engine.metadata("tokenizer.chat_template")
        if not template:
            raise PosttrainError(
                f"{self.model_path.name} has no chat template in its metadata",
                remedy="run without --apply_chat_template",
            )
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._eos_text or "",
            bos_token=self._bos_text or "",
            add_generation_prompt=add_generation_prompt,
        )
        return formatter(messages=chat_history).prompt  # type: ignore[arg-type]

    # ------------------------------------------------------------------ tokenisation

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs: Any
    ) -> list[int]:
        if add_special_tokens is None:
            # hf: the tokenizer's own default, except when the text already starts with BOS.
            add = self.engine.add_bos and not (self._bos_text and string.startswith(self._bos_text))
        else:
            add = bool(add_special_tokens)
        tokens = self.engine.tokenize(string, add_special=add)
        if left_truncate_len:
            tokens = tokens[-left_truncate_len:]
        return tokens

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.engine.detokenize(list(tokens), special=not skip_special_tokens)

    # ------------------------------------------------------------------ scoring

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        scored_reqs: list[ScoreRequest] = []
        for _, context_enc, continuation_enc in requests:
            if not context_enc or not continuation_enc:
                raise ValueError("loglikelihood needs a non-empty context and continuation after tokenisation")
            if len(continuation_enc) > self.max_length:
                raise PosttrainError(
                    f"a continuation of {len(continuation_enc)} tokens exceeds max_length={self.max_length}",
                    remedy="raise max_length",
                )
            # As the hf backend: keep the last max_length+1 tokens of context+continuation.
            whole = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1) :]
            ctx = whole[: len(whole) - len(continuation_enc)]
            scored_reqs.append(ScoreRequest(tuple(ctx), tuple(continuation_enc)))

        if self.batched:
            scored = self.engine.score_batched(scored_reqs)
        else:
            # Sorted, so each request reuses the longest prefix of the one before it.
            order = sorted(range(len(scored_reqs)), key=lambda i: scored_reqs[i].context + scored_reqs[i].continuation)
            seq = self.engine.score_sequential([scored_reqs[i] for i in order])
            scored = [None] * len(order)  # type: ignore[list-item]
            for pos, i in enumerate(order):
                scored[i] = seq[pos]

        results: list[tuple[float, bool]] = []
        for (key, _, _), s in zip(requests, scored):
            answer = (s.logprob, s.is_greedy)
            results.append(answer)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows: list[tuple[None, list[int], list[int]]] = []
        counts: list[int] = []
        for (string,) in [req.args for req in requests]:
            mine = [
                (None, ctx, cont)
                for ctx, cont in map(
                    make_disjoint_window,
                    get_rolling_token_windows(
                        token_list=self.tok_encode(string),
                        prefix_token=self.prefix_token_id,
                        max_seq_len=self.max_length,
                        context_len=1,
                    ),
                )
            ]
            windows.extend(mine)
            counts.append(len(mine))
        scored = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals: list[float] = []
        start = 0
        for req, n in zip(requests, counts):
            total = float(sum(lp for lp, _ in scored[start : start + n]))
            start += n
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        prepared = []
        for context, gen_kwargs in [req.args for req in requests]:
            kwargs = normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks)
            if kwargs.get("do_sample") and not self._warned_sampling:
                log.warning("%s decodes greedily; sampling arguments are ignored", MODEL_NAME)
                self._warned_sampling = True
            until = handle_stop_sequences(kwargs.pop("until", None), eos=self._eos_text)
            max_gen_toks = int(kwargs.pop("max_gen_toks"))
            max_ctx_len = self.max_length - max_gen_toks
            if max_ctx_len <= 0:
                raise PosttrainError(
                    f"max_gen_toks={max_gen_toks} leaves no room for a prompt in max_length={self.max_length}",
                    remedy="raise max_length or lower max_gen_toks",
                )
            prompt = self.tok_encode(context, left_truncate_len=max_ctx_len)
            prepared.append((prompt, until, max_gen_toks))

        outputs: list[str] = [""] * len(prepared)
        if self.batched:
            # Several sequences advance together, a wave's shared few-shot prefix decoded once.
            tokens_all = self.engine.generate_greedy_many(
                [p for p, _, _ in prepared],
                max_tokens=[m for _, _, m in prepared],
                stops=[u for _, u, _ in prepared],
            )
        else:
            # Sorted by prompt: few-shot prompts share long prefixes whose KV cache is then reused.
            tokens_all = [[] for _ in prepared]
            order = sorted(range(len(prepared)), key=lambda i: prepared[i][0])
            for i in order:
                prompt, until, max_gen_toks = prepared[i]
                tokens_all[i] = self.engine.generate_greedy(prompt, max_tokens=max_gen_toks, stop=until)
                _progress.advance()  # the display's count (posttrain._progress), not a bar of its own
        for i, tokens in enumerate(tokens_all):
            text = postprocess_generated_text(self.tok_decode(tokens), prepared[i][1], None)
            outputs[i] = text
            self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return outputs
