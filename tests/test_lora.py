"""LoRA adapters: detection verdicts, the merge route, the GGUF adapter route, and their agreement.

The adapter is a real one: trained for a few steps on the tiny base with PEFT and transformers'
Trainer (conftest `tiny_lora`). Both routes run llama.cpp's own converters and llama.cpp itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posttrain.checkpoint import (
    AdapterVerdict,
    checkpoint_sha256,
    inspect_adapter,
    inspect_checkpoint,
)
from posttrain.errors import PosttrainError
from posttrain.lora import convert_adapter, merge_adapter

# Probe text for the agreement of the two routes (words of the tiny tokenizer's corpus).
PROBE = "The engineer builds a red ball. 12 plus 30 is 42. My friend reads the long road."
# Largest per-token |Δ log-probability| allowed between merged-F16 and base-F16 + F16 adapter: both
# round to F16 at different places (W+BA once, vs W and B·A separately), ~1e-3 measured.
ROUTE_TOLERANCE = 0.02


def copy_adapter(src: Path, dst: Path, **config_changes) -> Path:
    shutil.copytree(src, dst)
    if config_changes:
        cfg = json.loads((dst / "adapter_config.json").read_text())
        cfg.update(config_changes)
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


# -- detection -----------------------------------------------------------------------------------
def test_a_trained_adapter_is_complete_and_names_its_base(tiny_lora, tiny_spm):
    verdict = inspect_checkpoint(tiny_lora, settle_seconds=0)
    assert isinstance(verdict, AdapterVerdict) and verdict.complete, verdict.reason
    assert verdict.base == tiny_spm.resolve()
    assert verdict.architecture == "LlamaForCausalLM"
    assert (verdict.peft_type, verdict.rank, verdict.lora_alpha) == ("LORA", 8, 16.0)
    assert verdict.routes == ("merge", "adapter") and not verdict.qlora
    # The tokenizer comes from the base; the content hash covers the base, so another base is another run.
    assert not verdict.tokenizer_files
    assert (tiny_spm / "model.safetensors") in verdict.content_files()
    assert len(checkpoint_sha256(verdict)) == 64


def test_a_half_written_adapter_is_not_complete(tiny_lora, tmp_path):
    adapter = copy_adapter(tiny_lora, tmp_path / "a")
    data = (adapter / "adapter_model.safetensors").read_bytes()
    (adapter / "adapter_model.safetensors").write_bytes(data[: len(data) - 100])
    verdict = inspect_checkpoint(adapter, settle_seconds=0)
    assert not verdict.complete and "adapter_model.safetensors is truncated" in verdict.reason
    (adapter / "adapter_model.safetensors").unlink()
    assert "adapter_model.safetensors is missing" in inspect_checkpoint(adapter, settle_seconds=0).reason
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r"')
    assert "does not parse" in inspect_checkpoint(adapter, settle_seconds=0).reason


def test_a_hub_id_base_gets_the_remedy_to_pass_a_directory(tiny_lora, tiny_spm, tmp_path):
    adapter = copy_adapter(tiny_lora, tmp_path / "a", base_model_name_or_path="meta-llama/Llama-3.2-1B")
    verdict = inspect_checkpoint(adapter, settle_seconds=0)
    assert not verdict.complete
    assert "Hugging Face Hub id" in verdict.reason and "--base DIR" in verdict.remedy
    # --base names the local copy: complete.
    assert inspect_checkpoint(adapter, settle_seconds=0, base=tiny_spm).complete
    missing = copy_adapter(tiny_lora, tmp_path / "b", base_model_name_or_path=str(tmp_path / "nowhere"))
    assert "does not exist" in inspect_checkpoint(missing, settle_seconds=0).reason


def test_an_adapter_for_another_base_is_refused_before_any_work(tiny_lora, tmp_path):
    from posttrain.tiny import make_tiny

    wider = make_tiny(tmp_path / "wider", hidden_size=512, intermediate_size=1024)
    verdict = inspect_adapter(tiny_lora, base=wider)
    assert not verdict.complete and "shape mismatch" in verdict.reason
    with pytest.raises(PosttrainError, match="shape mismatch"):
        merge_adapter(verdict, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_target_modules_missing_from_the_base_and_rank_mismatch(tiny_lora, tiny_spm, tmp_path):
    from safetensors.torch import load_file, save_file

    renamed = copy_adapter(tiny_lora, tmp_path / "renamed")
    tensors = load_file(renamed / "adapter_model.safetensors")
    save_file({k.replace("q_proj", "qkv_proj"): v for k, v in tensors.items()}, renamed / "adapter_model.safetensors")
    verdict = inspect_adapter(renamed)
    assert not verdict.complete and "qkv_proj does not exist in the base model" in verdict.reason

    wrong_rank = copy_adapter(tiny_lora, tmp_path / "rank", r=4)
    verdict = inspect_adapter(wrong_rank)
    assert not verdict.complete and "rank mismatch" in verdict.reason


def test_dora_and_other_peft_types_say_which_route_still_works(tiny_lora, tmp_path):
    dora = inspect_adapter(copy_adapter(tiny_lora, tmp_path / "dora", use_dora=True))
    assert dora.complete and dora.routes == ("merge",) and "DoRA" in dora.route_note
    with pytest.raises(PosttrainError, match="DoRA") as e:
        convert_adapter(dora, tmp_path / "dora.gguf")
    assert "merge route" in e.value.remedy and not (tmp_path / "dora.gguf").exists()
    ia3 = inspect_adapter(copy_adapter(tiny_lora, tmp_path / "ia3", peft_type="IA3"))
    assert ia3.complete and ia3.routes == ("merge",)


def test_a_four_bit_base_name_marks_qlora(tiny_lora, tiny_spm, tmp_path):
    adapter = copy_adapter(tiny_lora, tmp_path / "q", base_model_name_or_path="unsloth/llama-3-8b-bnb-4bit")
    verdict = inspect_adapter(adapter, base=tiny_spm)
    assert verdict.complete and verdict.qlora
    # A local 4-bit base (bitsandbytes' quantization_config) is named by the adapter, the full one given.
    four_bit = shutil.copytree(tiny_spm, tmp_path / "base-4bit")
    cfg = json.loads((four_bit / "config.json").read_text())
    (four_bit / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"load_in_4bit": True}}))
    local = copy_adapter(tiny_lora, tmp_path / "local", base_model_name_or_path=str(four_bit))
    assert inspect_adapter(local, base=tiny_spm).qlora
    refused = inspect_adapter(local)  # merging onto the 4-bit weights themselves is refused
    assert not refused.complete and "stored quantized" in refused.reason


# -- the two routes ------------------------------------------------------------------------------
def _token_logprobs(gguf: Path, text: str, lora: Path | None = None) -> list[float]:
    from posttrain.llamacpp import LlamaCppEngine, ScoreRequest

    engine = LlamaCppEngine(gguf, n_ctx=256, n_seq_max=1, kv_type="f32", lora_path=lora)
    try:
        tokens = engine.tokenize(text, add_special=True)
        reqs = [ScoreRequest(tuple(tokens[:i]), (tokens[i],)) for i in range(1, len(tokens))]
        return [s.logprob for s in engine.score_sequential(reqs)]
    finally:
        engine.close()


def test_the_merged_and_the_adapter_routes_agree(tiny_lora_routes):
    r = tiny_lora_routes
    merged = _token_logprobs(r["merged_f16"], PROBE)
    applied = _token_logprobs(r["base_f16"], PROBE, lora=r["lora_f16"])
    base = _token_logprobs(r["base_f16"], PROBE)
    route_gap = max(abs(a - b) for a, b in zip(merged, applied))
    lora_effect = max(abs(a - b) for a, b in zip(merged, base))
    print(f"max |Δ logprob| merged vs base+adapter {route_gap:.5f}; merged vs base {lora_effect:.4f}")
    assert route_gap <= ROUTE_TOLERANCE
    # The adapter really changes the model: the agreement is not that of two copies of the base.
    assert lora_effect > 10 * ROUTE_TOLERANCE


def test_the_merge_is_written_once_and_reused(tiny_lora, tiny_lora_routes, tmp_path):
    merged = tiny_lora_routes["merged"]
    marker = json.loads((merged / ".posttrain-merge.json").read_text())
    assert marker["dtype"] == "float32" and marker["base"] == str(inspect_adapter(tiny_lora).base)
    assert inspect_checkpoint(merged, settle_seconds=0).complete
    mtime = (merged / "model.safetensors").stat().st_mtime_ns
    assert merge_adapter(tiny_lora, merged) == merged
    assert (merged / "model.safetensors").stat().st_mtime_ns == mtime
    # Someone else's folder is not replaced.
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(PosttrainError, match="not written by posttrain"):
        merge_adapter(tiny_lora, tmp_path / "theirs")
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "mine"


def test_the_gguf_adapter_is_an_adapter_and_reused(tiny_lora, tiny_lora_routes):
    lora = tiny_lora_routes["lora_f16"]
    from posttrain.convert._gguf_info import _scan

    meta = _scan(lora).metadata
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == 16.0
    mtime = lora.stat().st_mtime_ns
    assert convert_adapter(tiny_lora, lora) == lora and lora.stat().st_mtime_ns == mtime


def test_an_adapter_that_does_not_fit_the_gguf_is_one_clear_error(tiny_lora_routes, tiny_gguf):
    from posttrain.convert._gguf_info import _scan
    from posttrain.llamacpp import LlamaCppEngine

    assert _scan(tiny_gguf["F16"]).metadata  # a full model, not an adapter
    with pytest.raises(PosttrainError, match="could not load the LoRA adapter"):
        LlamaCppEngine(tiny_lora_routes["base_f16"], n_ctx=64, lora_path=tiny_gguf["F16"])


def test_base_plus_adapter_is_its_own_model_for_the_result_cache(tiny_lora_routes, tiny_spm):
    from posttrain.evaluate import resolve_model
    from posttrain.evaluate._backends import with_lora

    r = tiny_lora_routes
    base = resolve_model(r["base_f16"])
    applied = with_lora(base, r["lora_f16"])
    assert applied.model_id.startswith(base.model_id + "+lora:") and applied.model_id != base.model_id
    assert applied.model_args["lora"] == str(r["lora_f16"].resolve()) and applied.backend == base.backend
    with pytest.raises(PosttrainError, match="applies to a GGUF base"):
        with_lora(resolve_model(tiny_spm), r["lora_f16"])
