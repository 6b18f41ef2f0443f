"""The `posttrain-llamacpp` lm-eval backend scores what lm-eval's own `hf` backend scores.

Everything here is real: tiny Llama checkpoints, GGUF files from llama.cpp's official converter,
llama.cpp through llama-cpp-python, and lm-eval's `HFLM` on the source checkpoint as the reference.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from lm_eval.api.instance import Instance

from posttrain.errors import PosttrainError
from posttrain.evaluate._llamacpp_lm import MODEL_NAME, LlamaCppLM

WORDS = "the a cat dog jumps over lazy fox red blue green house tree question answer is of and".split()


def _ggufs(ckpt: Path, out: Path) -> dict[str, Path]:
    from posttrain.convert import convert_checkpoint

    result = convert_checkpoint(ckpt, out, ["f16", "f32"], verify=False)
    return {v.quant: Path(v.path) for v in result.variants}


@pytest.fixture(scope="module")
def spm_ggufs(tiny_spm, tmp_path_factory) -> dict[str, Path]:
    return _ggufs(tiny_spm, tmp_path_factory.mktemp("gguf-spm"))


@pytest.fixture(scope="module")
def nobos_ggufs(tiny_spm_nobos, tmp_path_factory) -> dict[str, Path]:
    return _ggufs(tiny_spm_nobos, tmp_path_factory.mktemp("gguf-nobos"))


def _hf(ckpt: Path, **kw):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(ckpt), dtype="float32", device="cpu", batch_size=8, **kw)


@pytest.fixture(scope="module")
def hf_spm(tiny_spm):
    return _hf(tiny_spm)


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def mc_requests(n_contexts: int = 10, seed: int = 0) -> list[Instance]:
    """Multiple-choice shaped requests: 4 endings per context, contexts ending in nothing, a space,
    a colon or a newline (the space must move onto the continuation), plus empty contexts."""
    rng = random.Random(seed)
    reqs = []
    for c in range(n_contexts):
        ctx = _sentence(rng, 3, 30) + ["", " ", ":", "\n"][c % 4]
        for k in range(4):
            reqs.append(Instance("loglikelihood", {}, (ctx, " " + _sentence(rng, 1, 6)), k))
    reqs.append(Instance("loglikelihood", {}, ("", "hello world"), 0))
    reqs.append(Instance("loglikelihood", {}, ("", "the lazy dog"), 0))
    return reqs


def _max_abs(a, b) -> float:
    return max(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True))


def _choice_argmax(results) -> list[int]:
    """Index of the best of each group of 4 endings (the acc decision of a multiple-choice task)."""
    groups = [results[i : i + 4] for i in range(0, len(results) - len(results) % 4, 4)]
    return [int(np.argmax([r[0] for r in g])) for g in groups]


# ------------------------------------------------------------------------------ loglikelihood


def test_f32_gguf_matches_hf_backend_per_item(spm_ggufs, hf_spm):
    reqs = mc_requests()
    ref = hf_spm.loglikelihood(reqs, disable_tqdm=True)
    lm = LlamaCppLM(model=str(spm_ggufs["F32"]), kv_type="f32")
    got = lm.loglikelihood(reqs, disable_tqdm=True)
    assert _max_abs(ref, got) < 1e-3
    assert [r[1] for r in ref] == [g[1] for g in got]


def test_tokenisation_splits_context_and_continuation_like_hf(spm_ggufs, hf_spm):
    lm = LlamaCppLM(model=str(spm_ggufs["F16"]))
    for req in mc_requests():
        context, continuation = req.args
        if context:
            assert lm._encode_pair(context, continuation) == hf_spm._encode_pair(context, continuation)
    assert lm.prefix_token_id == hf_spm.prefix_token_id
    assert lm.eot_token_id == hf_spm.eot_token_id


def test_f16_gguf_close_to_hf_and_same_choices(spm_ggufs, hf_spm):
    reqs = mc_requests(n_contexts=25, seed=3)
    ref = hf_spm.loglikelihood(reqs, disable_tqdm=True)
    got = LlamaCppLM(model=str(spm_ggufs["F16"])).loglikelihood(reqs, disable_tqdm=True)
    assert _max_abs(ref, got) < 0.05
    ref_choice, got_choice = _choice_argmax(ref), _choice_argmax(got)
    agree = sum(a == b for a, b in zip(ref_choice, got_choice)) / len(ref_choice)
    assert agree >= 0.99


def test_model_without_bos_is_scored_like_hf(tiny_spm_nobos, nobos_ggufs):
    """The case llama-cpp-python's server gets wrong (its prompt log-probs shift by one token)."""
    hf = _hf(tiny_spm_nobos)
    lm = LlamaCppLM(model=str(nobos_ggufs["F32"]), kv_type="f32")
    assert lm.engine.add_bos is False
    assert lm.tok_encode("the cat")[0] != lm.engine.bos_id
    reqs = mc_requests(seed=5)
    ref = hf.loglikelihood(reqs, disable_tqdm=True)
    got = lm.loglikelihood(reqs, disable_tqdm=True)
    assert _max_abs(ref, got) < 1e-3
    assert [r[1] for r in ref] == [g[1] for g in got]


def test_matches_llama_cpp_full_sequence_logits(spm_ggufs):
    """Against llama-cpp-python's own high-level API evaluating each whole sequence at once."""
    import llama_cpp

    path = str(spm_ggufs["F16"])
    reqs = mc_requests(n_contexts=6, seed=7)
    lm = LlamaCppLM(model=path, batched=False)
    got = lm.loglikelihood(reqs, disable_tqdm=True)
    ref_model = llama_cpp.Llama(path, n_ctx=512, logits_all=True, verbose=False)
    for req, (lp, greedy) in zip(reqs, got, strict=True):
        context, continuation = req.args
        if context:
            ctx, cont = lm._encode_pair(context, continuation)
        else:
            ctx, cont = [lm.prefix_token_id], lm.tok_encode(continuation, add_special_tokens=False)
        tokens = ctx + cont
        ref_model.reset()
        ref_model.eval(tokens)
        scores = np.asarray(ref_model.scores[: len(tokens)], dtype=np.float64)
        logz = np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1)) + scores.max(1)
        rows = range(len(ctx) - 1, len(tokens) - 1)
        expect = sum(scores[r, tokens[r + 1]] - logz[r] for r in rows)
        expect_greedy = all(scores[r].argmax() == tokens[r + 1] for r in rows)
        assert lp == pytest.approx(expect, abs=1e-4)
        assert greedy == expect_greedy
    ref_model.close()


def test_batched_path_equals_simple_path(spm_ggufs):
    reqs = mc_requests(n_contexts=20, seed=11)
    path = str(spm_ggufs["F32"])
    simple = LlamaCppLM(model=path, batched=False, kv_type="f32").loglikelihood(reqs, disable_tqdm=True)
    probe = LlamaCppLM(model=path)
    naive = sum(len(c) + len(x) - 1 for c, x in (probe._encode_pair(*r.args) for r in reqs if r.args[0]))
    # Default packing; then small batches / few sequences, which force contexts longer than a batch
    # (evaluated once in chunks, shared with endings through llama_memory_seq_cp) and groups with
    # more endings than sequences (several rounds).
    for n_batch, n_seq_max in ((512, 64), (64, 3), (16, 3)):
        lm = LlamaCppLM(model=path, kv_type="f32", n_batch=n_batch, n_seq_max=n_seq_max)
        batched = lm.loglikelihood(reqs, disable_tqdm=True)
        assert _max_abs(simple, batched) < 1e-4, (n_batch, n_seq_max)
        assert [s[1] for s in simple] == [b[1] for b in batched]
        # Each distinct context was evaluated once, not once per request.
        assert lm.tokens_evaluated < naive


def test_results_come_back_in_request_order(spm_ggufs):
    reqs = mc_requests(n_contexts=5, seed=13)
    lm = LlamaCppLM(model=str(spm_ggufs["F32"]), kv_type="f32")
    forward = lm.loglikelihood(reqs, disable_tqdm=True)
    backward = lm.loglikelihood(list(reversed(reqs)), disable_tqdm=True)
    assert _max_abs(forward, list(reversed(backward))) < 1e-6


def test_long_context_is_left_truncated_like_hf(tiny_spm, spm_ggufs):
    rng = random.Random(17)
    reqs = [Instance("loglikelihood", {}, (_sentence(rng, 60, 80), " " + _sentence(rng, 2, 4)), i) for i in range(4)]
    hf = _hf(tiny_spm, max_length=48)
    lm = LlamaCppLM(model=str(spm_ggufs["F32"]), kv_type="f32", max_length=48)
    assert all(len(lm._encode_pair(*r.args)[0]) > 48 for r in reqs)
    ref = hf.loglikelihood(reqs, disable_tqdm=True)
    got = lm.loglikelihood(reqs, disable_tqdm=True)
    assert _max_abs(ref, got) < 1e-3


# ------------------------------------------------------------------------------ rolling


def test_rolling_loglikelihood_matches_hf_and_windows_sum(tiny_spm, spm_ggufs):
    rng = random.Random(19)
    texts = [_sentence(rng, 30, 90) for _ in range(3)]
    reqs = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    hf = _hf(tiny_spm, max_length=64)  # several windows per text
    lm = LlamaCppLM(model=str(spm_ggufs["F32"]), kv_type="f32", max_length=64)
    ref = hf.loglikelihood_rolling(reqs, disable_tqdm=True)
    got = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
    assert max(abs(a - b) for a, b in zip(ref, got)) < 5e-3
    # Independently: one text short enough for one window is the sum of every token's log-prob
    # given everything before it, conditioned on the prefix token.
    short = "the lazy dog jumps over the red house"
    tokens = lm.tok_encode(short)
    whole = lm.loglikelihood([Instance("loglikelihood", {}, ("", short), 0)], disable_tqdm=True)[0][0]
    (rolled,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (short,), 0)], disable_tqdm=True)
    by_token = lm._loglikelihood_tokens([(None, [lm.prefix_token_id] + tokens[:i], [tokens[i]]) for i in range(len(tokens))])
    assert rolled == pytest.approx(sum(lp for lp, _ in by_token), abs=1e-3)
    if tokens[0] != lm.prefix_token_id:  # without a BOS already in the text, both condition on it once
        assert rolled == pytest.approx(whole, abs=1e-3)


# ------------------------------------------------------------------------------ generation


def _gen(ctx: str, **kw) -> Instance:
    return Instance("generate_until", {}, (ctx, {"until": [], "do_sample": False, **kw}), 0)


def test_generation_is_greedy_like_hf_and_deterministic(tiny_spm, spm_ggufs):
    import torch
    from transformers import AutoModelForCausalLM

    prompts = ["the cat jumps over", "a red house and"]
    reqs = [_gen(p, max_gen_toks=24) for p in prompts]
    lm = LlamaCppLM(model=str(spm_ggufs["F32"]), kv_type="f32")
    first = lm.generate_until(reqs, disable_tqdm=True)
    assert first == lm.generate_until(reqs, disable_tqdm=True)
    assert all(first)
    # Token for token what transformers' greedy search produces on the source checkpoint (texts are
    # not compared: a random tiny model emits stray byte tokens, which decoders render differently).
    hf = AutoModelForCausalLM.from_pretrained(tiny_spm, dtype=torch.float32)
    for prompt in prompts:
        ids = lm.tok_encode(prompt)
        expect = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=lm.eot_token_id)
        expect = [t for t in expect[0, len(ids) :].tolist() if t != lm.eot_token_id]
        assert lm.engine.generate_greedy(ids, max_tokens=24) == expect


def test_max_gen_toks_is_honoured_beyond_16(spm_ggufs):
    lm = LlamaCppLM(model=str(spm_ggufs["F16"]))
    prompt = "the cat jumps over"
    long = lm.generate_until([_gen(prompt, max_gen_toks=40)], disable_tqdm=True)[0]
    short = lm.generate_until([_gen(prompt, max_gen_toks=5)], disable_tqdm=True)[0]
    n_long = len(lm.tok_encode(prompt + long)) - len(lm.tok_encode(prompt))
    assert n_long > 16
    assert long.startswith(short) and len(short) < len(long)
    # The model-level default applies when the task sets none.
    lm_default = LlamaCppLM(model=str(spm_ggufs["F16"]), max_gen_toks=30)
    default = lm_default.generate_until([Instance("generate_until", {}, (prompt, {"until": []}), 0)], disable_tqdm=True)[0]
    assert len(lm.tok_encode(prompt + default)) - len(lm.tok_encode(prompt)) > 16


def test_generation_stops_at_stop_string_and_drops_it(spm_ggufs):
    lm = LlamaCppLM(model=str(spm_ggufs["F16"]))
    prompt = "the cat jumps over"
    free = lm.generate_until([_gen(prompt, max_gen_toks=40)], disable_tqdm=True)[0]
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    assert stop.strip(), free
    cut = lm.generate_until([_gen(prompt, max_gen_toks=40, until=[stop])], disable_tqdm=True)[0]
    assert cut == free.split(stop)[0]
    assert stop not in cut


_SHOTS = "the cat is red. the dog is blue. the house is green. "


@pytest.mark.parametrize("reqs", [
    # A shared few-shot prefix: waves in the unified cache decode it once.
    [_gen(_SHOTS + "the tree is", max_gen_toks=12), _gen(_SHOTS + "the fox is", max_gen_toks=30, until=["e"]),
     _gen(_SHOTS + "a lazy dog", max_gen_toks=7), _gen(_SHOTS + "the tree is", max_gen_toks=12)],
    # Nothing shared: a KV stream per prompt, each slot refilled when its sequence ends.
    [_gen(_SHOTS + "the tree is", max_gen_toks=12), _gen("the fox is", max_gen_toks=30, until=["e"]),
     _gen("a lazy dog " * 6, max_gen_toks=7), _gen("jumps over", max_gen_toks=20, until=["\n\n", " the"]),
     _gen(_SHOTS + "the tree is", max_gen_toks=12)],
], ids=["shared-prefix-waves", "own-stream-slots"])
def test_batched_generation_equals_one_at_a_time(spm_ggufs, reqs):
    """Many sequences per decode, a shared few-shot prefix decoded once, slots refilled as
    sequences end: none of it changes a generated token."""
    path = str(spm_ggufs["F32"])
    one = LlamaCppLM(model=path, kv_type="f32", batched=False).generate_until(reqs, disable_tqdm=True)
    # A small batch forces the prompts through several decodes; n_seq_max=2 forces several waves
    # (or two slots, refilled).
    for n_batch, n_seq_max in ((512, 64), (16, 2)):
        lm = LlamaCppLM(model=path, kv_type="f32", n_batch=n_batch, n_seq_max=n_seq_max)
        assert lm.generate_until(reqs, disable_tqdm=True) == one
        shared = all(r.args[0].startswith(_SHOTS) for r in reqs)
        assert (lm.engine._slots is None) == shared  # the case ran the path it is named after
    assert one[0] == one[-1]


# ------------------------------------------------------------------------------ loading and registry


def test_registered_with_lm_eval(spm_ggufs):
    from lm_eval.api.registry import get_model

    cls = get_model(MODEL_NAME)
    assert cls is LlamaCppLM
    lm = cls.create_from_arg_string(f"model={spm_ggufs['F16']},max_length=128,n_threads=1", {"batch_size": 8})
    assert lm.max_length == 128


def test_gguf_that_does_not_load_is_a_clear_error(tmp_path, spm_ggufs):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(spm_ggufs["F16"].read_bytes()[:4096])
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 definitely not a gguf")
    for bad, words in ((truncated, "could not load"), (not_gguf, "not a GGUF"), (tmp_path / "missing.gguf", "not found")):
        with pytest.raises(PosttrainError) as err:
            LlamaCppLM(model=str(bad))
        assert words in err.value.message
        assert str(bad) in err.value.message
        assert "\n" not in err.value.one_line()
    with pytest.raises(PosttrainError):
        LlamaCppLM()
