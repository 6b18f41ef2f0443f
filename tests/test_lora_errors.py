"""The adapter detector against hostile input, and the error cases of the two routes: one line each,
nothing half-written.

The hostile adapters here are written by hand (JSON and safetensors bytes, no torch) over a
hand-written base, so hypothesis can try many in seconds; the error cases use the real trained adapter.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.checkpoint import inspect_adapter
from posttrain.errors import PosttrainError
from posttrain.lora import convert_adapter

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def safetensors_bytes(tensors: dict[str, list[int]]) -> bytes:
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


def hand_base(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (root / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
    (root / "model.safetensors").write_bytes(safetensors_bytes({"model.layers.0.self_attn.q_proj.weight": [8, 8]}))
    return root


_DEFAULT = object()


def hand_adapter(root: Path, base: Path, config: object = _DEFAULT) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
           "base_model_name_or_path": str(base)} if config is _DEFAULT else config
    (root / "adapter_config.json").write_text(json.dumps(cfg))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    (root / "adapter_model.safetensors").write_bytes(
        safetensors_bytes({f"{prefix}.lora_A.weight": [2, 8], f"{prefix}.lora_B.weight": [8, 2]}))
    return root


def test_the_hand_written_adapter_is_complete(tmp_path):
    verdict = inspect_adapter(hand_adapter(tmp_path / "a", hand_base(tmp_path / "base")))
    assert verdict.complete, verdict.reason


@FAST
@given(config=json_values)
def test_any_adapter_config_gives_a_verdict_never_an_exception(tmp_path, config):
    base = hand_base(tmp_path / "base")
    verdict = inspect_adapter(hand_adapter(tmp_path / "a", base, config))
    assert isinstance(verdict.reason, str) and verdict.reason
    # A config that names no base (or not this one) cannot be complete without --base.
    if not (isinstance(config, dict) and config.get("base_model_name_or_path") == str(base)):
        assert not verdict.complete


@FAST
@given(field=st.sampled_from(["peft_type", "r", "lora_alpha", "target_modules", "base_model_name_or_path",
                              "use_dora", "rank_pattern"]), value=json_values)
def test_any_value_of_a_known_field_gives_a_verdict(tmp_path, field, value):
    base = hand_base(tmp_path / "base")
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
           "base_model_name_or_path": str(base), field: value}
    verdict = inspect_adapter(hand_adapter(tmp_path / "a", base, cfg))
    assert isinstance(verdict.reason, str)
    if verdict.complete:
        assert verdict.routes and verdict.base == base.resolve()


@FAST
@given(header=json_values)
def test_any_adapter_safetensors_header_gives_a_verdict(tmp_path, header):
    adapter = hand_adapter(tmp_path / "a", hand_base(tmp_path / "base"))
    raw = json.dumps(header).encode()
    (adapter / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    verdict = inspect_adapter(adapter)
    assert not verdict.complete and verdict.reason


def test_links_out_of_the_adapter_directory_are_refused(tmp_path):
    base = hand_base(tmp_path / "base")
    outside = hand_adapter(tmp_path / "elsewhere", base)
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").symlink_to(outside / "adapter_config.json")
    (adapter / "adapter_model.safetensors").symlink_to(outside / "adapter_model.safetensors")
    verdict = inspect_adapter(adapter)
    assert not verdict.complete and "leads outside" in verdict.reason


def posttrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True, timeout=300)


def test_an_adapter_on_a_hub_id_is_one_line_with_the_remedy(tiny_lora, tmp_path):
    import shutil

    adapter = shutil.copytree(tiny_lora, tmp_path / "exp" / "final_model")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "org/base-1b"}))
    proc = posttrain("run", str(adapter), "--home", str(tmp_path / "home"))
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "Hugging Face Hub id" in line and "--base DIR" in line
    assert not (tmp_path / "home" / "runs").exists()
    proc = posttrain("lora", "merge", str(adapter), str(tmp_path / "merged"))
    assert proc.returncode == 1 and "--base DIR" in proc.stderr and not (tmp_path / "merged").exists()


def test_a_base_architecture_the_converter_does_not_know(tiny_lora, tiny_spm, tmp_path):
    import shutil

    base = shutil.copytree(tiny_spm, tmp_path / "odd-base")
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "architectures": ["NoSuchForCausalLM"]}))
    with pytest.raises(PosttrainError, match="does not know the base architecture NoSuchForCausalLM"):
        convert_adapter(tiny_lora, tmp_path / "out" / "x.gguf", base=base)
    assert not list((tmp_path / "out").glob("*.gguf")) and not list((tmp_path / "out").glob(".*partial"))


def test_dora_through_the_cli_names_the_route_that_still_works(tiny_lora, tmp_path):
    import shutil

    adapter = shutil.copytree(tiny_lora, tmp_path / "dora")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    proc = posttrain("lora", "gguf", str(adapter), str(tmp_path / "dora.gguf"))
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "DoRA" in line and "merge route" in line and not (tmp_path / "dora.gguf").exists()
