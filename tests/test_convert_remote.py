"""A ladder's variant as a unit (convert/_remote.py), run here in this process: the worker's side
gives the local quantizer's bytes, the coordinator's side places them only with a matching sha256,
and a quantizer failure travels back with its advice. The cluster runs are in
test_ray_pipeline.py."""

from __future__ import annotations

import pytest

from posttrain._files import sha256_file
from posttrain.convert._remote import QuantizeSpec, _place, quantize_on, quantize_unit
from posttrain.errors import PosttrainError
from posttrain.executors import LocalExecutor
from posttrain.toolchain import find_converter


def test_a_variant_made_as_a_unit_is_the_local_quantizers_file(tiny_gguf, tmp_path):
    f16 = tiny_gguf["F16"]
    (made,) = quantize_on(LocalExecutor(), ["Q4_K_M"], f16, sha256_file(f16), tmp_path, "tiny", find_converter(None),
                          None, lambda variant, text: None)
    assert made.path == tmp_path / "tiny-Q4_K_M.gguf" and made.made_by == "quantizer"
    assert made.sha256 == sha256_file(made.path) == sha256_file(tiny_gguf["Q4_K_M"])
    assert made.header["tensor_count"] > 0
    assert not list(tmp_path.glob(".*partial*"))


def test_bytes_that_do_not_match_the_workers_sha256_are_not_placed(tmp_path):
    final = tmp_path / "m-Q4_K_M.gguf"
    with pytest.raises(PosttrainError, match="arrived damaged from node n1"):
        _place({"data": b"GGUF broken", "sha256": "0" * 64, "size": 11}, final, "Q4_K_M", "n1")
    assert not final.exists() and not list(tmp_path.iterdir())


def test_a_quantizer_failure_on_a_worker_keeps_its_advice(tiny_gguf):
    executor = LocalExecutor()
    f16 = executor.share(tiny_gguf["F16"], sha256_file(tiny_gguf["F16"]))
    spec = QuantizeSpec("IQ2_XXS", f16, "m-IQ2_XXS.gguf", find_converter(None), None, None)  # needs an imatrix
    with pytest.raises(PosttrainError) as caught:
        quantize_unit(spec)
    assert caught.value.message.startswith("llama.cpp's quantizer failed to make IQ2_XXS")
    assert "--imatrix" in caught.value.remedy  # not "see LOG": that file was on the worker


def test_a_stop_cancels_the_quantization_units_and_the_rerun_keeps_f16(tiny_spm, tmp_path):
    import threading

    from posttrain.convert import convert_checkpoint
    from posttrain.executors import StopOn, WorkInterrupted

    stop = threading.Event()
    stop.set()  # asked before the units start: F16 is made here, the units never run
    elsewhere = StopOn(LocalExecutor(), stop)
    elsewhere.name = "elsewhere"  # what convert sees of a cluster: units to submit, not this process
    with pytest.raises(WorkInterrupted):
        convert_checkpoint(tiny_spm, tmp_path, "q4_k_m", executor=elsewhere, hf_reference=False)
    assert (tmp_path / "tiny-spm-F16.gguf").is_file() and not (tmp_path / "tiny-spm-Q4_K_M.gguf").exists()
    rerun = convert_checkpoint(tiny_spm, tmp_path, "q4_k_m", hf_reference=False)
    assert [(v.quant, v.cached) for v in rerun.variants] == [("F16", True), ("Q4_K_M", False)]


def test_no_cluster_is_started_for_a_ladder_the_converter_makes_alone():
    from posttrain.convert import quantizing_executor

    for quants, executor in (("f16,q8_0", "ray"), ("q4_k_m", "local"), ("q4_k_m", None)):
        with quantizing_executor(quants, executor) as made:
            assert made is None, (quants, executor)
