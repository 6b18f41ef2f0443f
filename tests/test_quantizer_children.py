"""The quantizer runs in child processes, several variants side by side (convert/_quantizer.py).

What a user sees: a ladder's files are the bytes llama.cpp's quantizer makes by hand; a crash inside
the quantizer ends one child and the conversion says which variant, in one line; nothing of the
quantizer runs in posttrain's own process.
"""

from __future__ import annotations

import ctypes
import json

import psutil
import pytest

from posttrain import llamacpp
from posttrain._files import sha256_file
from posttrain.convert import MANIFEST, convert_checkpoint, quantizer_types
from posttrain.convert._quantizer import QuantizerPool, longest_first, slots_for
from posttrain.errors import PosttrainError
from posttrain.toolchain import find_converter
from polling import wait_for

LADDER = ["f16", "q8_0", "q6_k", "q4_k_m", "iq4_xs"]


def _by_hand(f16, quant: str, dest) -> str:
    """llama.cpp's quantizer through its own API in this process, as a user would call it."""
    lc = llamacpp.load_llama_cpp()
    params = lc.llama_model_quantize_default_params()
    params.ftype = quantizer_types()[quant]
    assert lc.llama_model_quantize(str(f16).encode(), str(dest).encode(), ctypes.byref(params)) == 0
    return sha256_file(dest)


def test_a_ladder_is_made_in_children_with_the_bytes_of_the_quantizer_by_hand(tiny_spm, tmp_path, monkeypatch):
    import llama_cpp

    def not_here(*args):
        raise AssertionError("the quantizer ran inside posttrain's own process")

    monkeypatch.setattr(llama_cpp, "llama_model_quantize", not_here)  # this process only: children are untouched
    result = convert_checkpoint(tiny_spm, tmp_path / "gguf", LADDER, quantize_q8_0=True, verify=False)
    monkeypatch.undo()

    assert [v.quant for v in result.variants] == ["F16", "Q8_0", "Q6_K", "Q4_K_M", "IQ4_XS"]
    f16 = result.variant("F16").path
    for v in result.variants[1:]:
        assert v.made_by == "quantizer" and v.header["tensor_count"] > 0
        assert v.sha256 == sha256_file(v.path) == _by_hand(f16, v.quant, tmp_path / f"hand-{v.quant}.gguf"), v.quant
    recorded = json.loads((tmp_path / "gguf" / MANIFEST).read_text())["variants"]
    assert {q: e["sha256"] for q, e in recorded.items()} == {v.quant: v.sha256 for v in result.variants}
    assert not list((tmp_path / "gguf").glob(".*.partial"))
    # The children are gone with the conversion.
    assert not [p for p in psutil.Process().children(recursive=True)
                if "_quantizer_child" in " ".join(p.cmdline())]


def test_a_crash_in_the_quantizer_names_the_variant_and_ends_one_child(tiny_gguf, tmp_path):
    with QuantizerPool(1, find_converter()) as pool:
        (child,) = [p for p in psutil.Process().children() if "_quantizer_child" in " ".join(p.cmdline())]
        child.kill()  # what a fault in native code does to the process it happens in
        assert wait_for(lambda: child.status() == psutil.STATUS_ZOMBIE, timeout=30)  # dead, left for the pool to reap
        job = pool.submit("Q4_K_M", tiny_gguf["F16"], tmp_path / ".x.partial", None, tmp_path / "q.log")
        crashed = r"quantizer crashed while making Q4_K_M \(SIGKILL: killed"
        with pytest.raises(PosttrainError, match=crashed):
            job.result(timeout=60)
    assert not (tmp_path / ".x.partial").exists()


def test_a_failed_quantization_is_one_line_with_the_remedy(tiny_gguf, tmp_path):
    # IQ2_XXS needs an importance matrix: llama.cpp's quantizer refuses it, in the child.
    with QuantizerPool(1, find_converter()) as pool:
        job = pool.submit("IQ2_XXS", tiny_gguf["F16"], tmp_path / ".y.partial", None, tmp_path / "q.log")
        with pytest.raises(PosttrainError, match="failed to make IQ2_XXS") as e:
            job.result(timeout=120)
    assert "--imatrix" in e.value.one_line() and "\n" not in e.value.one_line()
    assert not (tmp_path / ".y.partial").exists()


def test_side_by_side_within_the_cpus_and_the_memory():
    assert slots_for(6, 1_000) == min(6, llamacpp.cpu_threads())
    assert slots_for(1, 1_000) == 1
    # A tensor whose quantization would not fit in memory twice: one at a time (never zero).
    assert slots_for(6, psutil.virtual_memory().total) == 1
    # IQ types are much slower to make: started first, so that one of them does not end the ladder alone.
    assert longest_first(["Q8_0", "Q6_K", "IQ4_XS", "Q4_K_M", "IQ3_M"]) == ["IQ4_XS", "IQ3_M", "Q8_0", "Q6_K", "Q4_K_M"]
