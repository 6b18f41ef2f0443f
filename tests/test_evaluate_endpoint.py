"""`--endpoint`: lm-eval's `local-completions` against a real OpenAI-compatible server (llama-cpp-python's)."""

from __future__ import annotations

import json

import pytest
from test_evaluate_offline import write_hellaswag

from posttrain.evaluate import evaluate
from posttrain.store import Store


@pytest.mark.slow
def test_endpoint_scores_match_in_process_and_are_never_reused(tiny_gguf, tiny_spm, tmp_path):
    from posttrain.serve import LlamaServer

    write_hellaswag(tmp_path / "data", n=3)
    store = Store(tmp_path / "posttrain.db")
    (local,) = evaluate(tiny_gguf["F16"], ["hellaswag"], data_dir=tmp_path / "data", store=store,
                        out_dir=tmp_path / "local")
    with LlamaServer(tiny_gguf["F16"], n_ctx=512) as server:
        runs = [evaluate("tiny", ["hellaswag"], data_dir=tmp_path / "data", store=store, out_dir=tmp_path / "ep",
                         endpoint=server.url, tokenizer=tiny_spm)[0] for _ in range(2)]
    assert [r.backend for r in runs] == ["local-completions"] * 2
    assert not runs[0].cached and not runs[1].cached  # a server's weights cannot be pinned: never reused

    def lls(eval_id):
        return {r["doc_hash"]: json.loads(r["choice_ll_json"]) for r in
                store.query("SELECT doc_hash, choice_ll_json FROM items WHERE eval_id=? AND metric='acc'", (eval_id,))}

    here, there = lls(local.eval_id), lls(runs[0].eval_id)
    assert here.keys() == there.keys() and len(here) == 3
    for key in here:  # tiny_spm starts with BOS, the case where the server's prompt log-probs are aligned
        assert there[key] == pytest.approx(here[key], abs=2e-2)
