"""Fixtures: tiny models made on the spot (seconds), real llama.cpp, real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import posttrain  # noqa: F401  before any test module imports numpy or torch, as every posttrain process does

# Tests never reach the Hub; make the libraries fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Which 16-bit type is faster depends on the CPU (BF16 on AVX512_BF16): runs in tests evaluate F16 as
# their reference wherever they run. tests/test_reference_choice.py sets it itself to test the choice.
os.environ.setdefault("POSTTRAIN_REFERENCE_TYPE", "F16")


@pytest.fixture(scope="session")
def tiny_spm(tmp_path_factory) -> Path:
    """A tiny Llama with a SentencePiece tokenizer that starts with BOS."""
    from posttrain.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("ckpt") / "tiny-spm", tokenizer="spm")


@pytest.fixture(scope="session")
def tiny_spm_nobos(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer adds no BOS (like SmolLM2, Qwen)."""
    from posttrain.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("ckpt") / "tiny-nobos", tokenizer="spm", add_bos=False, seed=1)


@pytest.fixture(scope="session")
def tiny_bpe(tmp_path_factory) -> Path:
    """A tiny Llama with a freshly trained byte-level BPE tokenizer (unknown pre-tokenizer hash)."""
    from posttrain.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("ckpt") / "tiny-bpe", tokenizer="bpe", seed=2)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_spm, tmp_path_factory) -> dict[str, Path]:
    """F16, Q8_0 and Q4_K_M GGUF files of `tiny_spm`, made by llama.cpp's converter and quantizer."""
    from posttrain.convert import convert_checkpoint

    result = convert_checkpoint(tiny_spm, tmp_path_factory.mktemp("gguf"), ["f16", "q8_0", "q4_k_m"])
    return {v.quant: v.path for v in result.variants}


@pytest.fixture(scope="session")
def tiny_lora(tiny_spm, tmp_path_factory) -> Path:
    """A LoRA trained for a few steps on `tiny_spm` with PEFT and transformers' Trainer; its
    adapter_config.json names `tiny_spm`'s directory as the base (as PEFT writes it)."""
    from lora_helpers import train_lora

    return train_lora(tiny_spm, tmp_path_factory.mktemp("lora") / "final_model")


@pytest.fixture(scope="session")
def tiny_lora_routes(tiny_lora, tmp_path_factory) -> dict[str, Path]:
    """Both routes built: the merged checkpoint and its F16 GGUF, the base F16 GGUF and the GGUF LoRA."""
    from posttrain.checkpoint import inspect_adapter
    from posttrain.convert import convert_checkpoint
    from posttrain.lora import convert_adapter, merge_adapter

    out = tmp_path_factory.mktemp("lora-routes")
    verdict = inspect_adapter(tiny_lora)
    merged = merge_adapter(verdict, out / "merged")
    return {
        "merged": merged,
        "merged_f16": convert_checkpoint(merged, out / "gguf-merged", ["f16"], verify=False).variant("F16").path,
        "base_f16": convert_checkpoint(verdict.base, out / "gguf-base", ["f16"], verify=False).variant("F16").path,
        "lora_f16": convert_adapter(verdict, out / "lora-F16.gguf"),
    }


@pytest.fixture(scope="module")
def cluster():
    """A real 3-node local Ray cluster (tests/ray_cluster.py) for one test module; no Ray process may
    outlive it."""
    from ray_cluster import start_cluster

    c = start_cluster(3)
    try:
        yield c
    finally:
        c.stop()
    assert not c.processes(), "a Ray process of the test cluster outlived it"
