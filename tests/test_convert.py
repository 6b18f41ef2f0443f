"""HF → GGUF with llama.cpp's own converter and quantizer: real files, real loads, real numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from platforms import kill_tree

from posttrain.convert import MANIFEST, convert_checkpoint, parse_quant_list
from posttrain.errors import PosttrainError
from posttrain.tiny import make_tiny


def _manifest(path: Path) -> dict:
    return json.loads((path.parent / MANIFEST).read_text())


def test_three_variants_are_made_loaded_and_recorded(tiny_gguf):
    from llama_cpp import Llama

    assert set(tiny_gguf) == {"F16", "Q8_0", "Q4_K_M"}
    for quant, path in tiny_gguf.items():
        assert path.name.endswith(f"-{quant}.gguf")
        llm = Llama(model_path=str(path), n_ctx=64, verbose=False)
        assert llm.n_vocab() == 512
        llm.close()
    manifest = _manifest(tiny_gguf["F16"])
    assert manifest["toolchain"]["converter"] == "sdist"
    for quant, entry in manifest["variants"].items():
        assert entry["header"]["architecture"] == "llama"
        assert entry["header"]["file_type"] == quant
        assert entry["header"]["tokenizer_model"] == "llama"
        assert entry["header"]["tensor_count"] == 21


def test_quality_figures_order_f16_q8_q4(tiny_gguf):
    variants = _manifest(tiny_gguf["F16"])["variants"]
    vs_hf = variants["F16"]["verification"]["vs_hf"]
    assert vs_hf["max_abs_dlogprob"] < 0.02  # F16 vs float32 HF on the same tokens
    assert vs_hf["top1_agreement"] > 0.98
    q8, q4 = variants["Q8_0"]["verification"]["vs_f16"], variants["Q4_K_M"]["verification"]["vs_f16"]
    assert 0 < q8["mean_kld"] < q4["mean_kld"]
    assert q8["top1_agreement"] > q4["top1_agreement"]
    # Sizes 256-aligned: every matrix really is k-quantized, nothing fell back.
    assert variants["Q4_K_M"]["header"]["fallback_types"] == {}
    assert "Q4_K" in variants["Q4_K_M"]["header"]["tensor_types"]


def test_rerun_is_a_no_op(tiny_spm, tiny_gguf):
    before = {q: p.stat().st_mtime_ns for q, p in tiny_gguf.items()}
    result = convert_checkpoint(tiny_spm, tiny_gguf["F16"].parent, ["f16", "q8_0", "q4_k_m"])
    assert all(v.cached for v in result.variants)
    assert {v.quant: v.path.stat().st_mtime_ns for v in result.variants} == before


def test_tampered_variant_is_rebuilt(tiny_spm, tmp_path):
    out = tmp_path / "gguf"
    first = convert_checkpoint(tiny_spm, out, ["q4_k_m"], verify=False)
    q4 = first.variant("Q4_K_M").path
    data = bytearray(q4.read_bytes())
    data[-10] ^= 0xFF
    q4.write_bytes(bytes(data))
    again = convert_checkpoint(tiny_spm, out, ["q4_k_m"], verify=False)
    assert again.variant("F16").cached and not again.variant("Q4_K_M").cached
    assert again.variant("Q4_K_M").sha256 == first.variant("Q4_K_M").sha256  # deterministic quantizer


def test_model_without_bos_converts_and_keeps_the_flag(tiny_spm_nobos, tmp_path):
    result = convert_checkpoint(tiny_spm_nobos, tmp_path / "gguf", ["f16"])
    f16 = result.variant("F16")
    assert f16.header["add_bos"] is False
    assert f16.verification["vs_hf"]["max_abs_dlogprob"] < 0.02


def test_unknown_bpe_pre_tokenizer_says_what_to_do(tiny_bpe, tmp_path):
    out = tmp_path / "gguf"
    with pytest.raises(PosttrainError) as err:
        convert_checkpoint(tiny_bpe, out, ["f16"], verify=False)
    assert "BPE pre-tokenizer" in err.value.message and "--pre-tokenizer" in err.value.remedy
    assert not list(out.glob("*.gguf")) and not list(out.glob(".*.partial"))
    result = convert_checkpoint(tiny_bpe, out, ["f16", "q8_0"], pre_tokenizer="gpt-2")
    assert result.variant("F16").header["tokenizer_pre"] == "gpt-2"
    assert result.variant("F16").verification["vs_hf"]["max_abs_dlogprob"] < 0.02


def test_pre_tokenizer_unknown_to_the_runtime_is_an_error(tiny_bpe, tmp_path):
    with pytest.raises(PosttrainError) as err:
        convert_checkpoint(tiny_bpe, tmp_path / "gguf", ["f16"], pre_tokenizer="gpt2")
    assert "cannot load" in err.value.message
    assert not list((tmp_path / "gguf").glob("*.gguf"))


def test_unsupported_architecture_is_named(tiny_spm, tmp_path):
    ckpt = shutil.copytree(tiny_spm, tmp_path / "odd")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["FrobnicatorForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PosttrainError, match="FrobnicatorForCausalLM is not supported"):
        convert_checkpoint(ckpt, tmp_path / "gguf", ["f16"])


def test_k_quant_fallbacks_are_reported(tmp_path):
    ckpt = make_tiny(tmp_path / "odd-size", hidden_size=320, intermediate_size=640, num_heads=4, num_kv_heads=2)
    result = convert_checkpoint(ckpt, tmp_path / "gguf", ["q4_k_m"], verify=False)
    q4 = result.variant("Q4_K_M")
    assert sum(q4.fallbacks.values()) == len(q4.header["k_incompatible"]) > 0
    assert not any(t.startswith("Q4_K") for t in q4.fallbacks)


def test_unknown_type_suggests_close_names():
    with pytest.raises(PosttrainError) as err:
        parse_quant_list("f16,q4_km")
    assert "q4_k_m" in err.value.remedy
    assert parse_quant_list("q4_k_m,q8_0") == ["F16", "Q4_K_M", "Q8_0"]


def test_incomplete_checkpoint_is_refused(tiny_spm, tmp_path):
    ckpt = shutil.copytree(tiny_spm, tmp_path / "c")
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer.model").unlink()
    with pytest.raises(PosttrainError, match="no tokenizer"):
        convert_checkpoint(ckpt, tmp_path / "gguf", ["f16"])


def test_out_of_disk_is_caught_before_starting(tiny_spm, tmp_path, monkeypatch):
    # A full disk cannot be made here safely; the check reads free space from shutil.disk_usage.
    import posttrain.convert._convert as conv

    monkeypatch.setattr(conv.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(PosttrainError, match="not enough disk space"):
        convert_checkpoint(tiny_spm, tmp_path / "gguf", ["f16"])
    assert not list((tmp_path / "gguf").glob("*.gguf"))


def test_killed_conversion_leaves_no_file_under_the_final_name(tiny_spm, tmp_path):
    out = tmp_path / "gguf"
    proc = subprocess.Popen([sys.executable, "-m", "posttrain", "convert", str(tiny_spm), "--out", str(out),
                             "-q", "f16,q8_0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".*.partial")):
        time.sleep(0.05)
    assert list(out.glob(".*.partial")), "the converter never started writing"
    kill_tree(proc.pid)  # posttrain and its converter, as kill -9 of the process group did
    proc.wait()
    assert not list(out.glob("*.gguf"))
    result = convert_checkpoint(tiny_spm, out, ["f16", "q8_0"], verify=False)
    assert not list(out.glob(".*.partial"))
    assert [v.cached for v in result.variants] == [False, False]


def test_cli_prints_table_and_fails_in_one_line(tiny_spm, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "posttrain", "convert", str(tiny_spm), "--out", str(tmp_path / "g"),
                         "-q", "f16", "--no-verify"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert ok.returncode == 0, ok.stderr
    assert "F16" in ok.stdout and "manifest" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "posttrain", "convert", str(tmp_path / "nope"), "--out",
                          str(tmp_path / "g")], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "not a complete checkpoint" in bad.stderr


def test_variant_failing_verification_is_an_error_and_not_kept(tiny_spm, tmp_path, monkeypatch):
    # Real Q4_K_M; the bar is raised above what 4-bit can reach, as a broken quantizer would miss it.
    import posttrain.convert._verify as verify

    monkeypatch.setattr(verify, "MAX_MEAN_KLD", 1e-6)
    out = tmp_path / "gguf"
    with pytest.raises(PosttrainError, match="Q8_0 fails verification"):
        convert_checkpoint(tiny_spm, out, ["f16", "q8_0"])
    assert sorted(p.name for p in out.glob("*.gguf")) == ["tiny-spm-F16.gguf"]
    assert set(json.loads((out / MANIFEST).read_text())["variants"]) == {"F16"}


def test_header_scan_agrees_with_gguf_py(tiny_gguf):
    """posttrain skips vocabulary arrays for speed; what it reads must equal llama.cpp's gguf-py reader."""
    from posttrain.convert._gguf_info import _scan, gguf_module
    from posttrain.toolchain import find_converter

    gguf = gguf_module(find_converter())
    for path in tiny_gguf.values():
        ours = _scan(path)
        reader = gguf.GGUFReader(str(path), "r")
        assert [(n, tuple(int(x) for x in s), t) for n, s, t in ours.tensors] == \
            [(t.name, tuple(int(x) for x in t.shape), int(t.tensor_type)) for t in reader.tensors]
        for key in ("general.architecture", "general.file_type", "tokenizer.ggml.model",
                    "tokenizer.ggml.add_bos_token", "llama.context_length", "llama.block_count"):
            assert ours.metadata[key] == reader.get_field(key).contents(), key
