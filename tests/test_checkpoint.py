"""The finished-checkpoint detector: every verdict a watcher can meet, with its reason in plain words."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from posttrain.checkpoint import checkpoint_sha256, inspect_checkpoint
from posttrain.tiny import make_tiny


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """A tiny Llama saved in several safetensors shards with an index, as big trainers save."""
    import torch
    from transformers import LlamaForCausalLM

    src = make_tiny(tmp_path_factory.mktemp("src") / "tiny", seed=3)
    model = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32)
    out = tmp_path_factory.mktemp("sharded") / "final_model"
    model.save_pretrained(out, max_shard_size="2MB")
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)
    assert len(list(out.glob("model-*.safetensors"))) >= 3
    return out


def copy_of(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_complete_checkpoint_is_accepted(tiny_spm):
    verdict = inspect_checkpoint(tiny_spm, settle_seconds=0.2)
    assert verdict.complete, verdict.reason
    assert verdict.architecture == "LlamaForCausalLM"


def test_sharded_checkpoint_is_accepted(sharded):
    verdict = inspect_checkpoint(sharded, settle_seconds=0)
    assert verdict.complete, verdict.reason
    assert len(verdict.weight_files) >= 3


def test_missing_config(tiny_spm, tmp_path):
    ckpt = copy_of(tiny_spm, tmp_path / "c")
    (ckpt / "config.json").unlink()
    assert inspect_checkpoint(ckpt, settle_seconds=0).reason == "config.json is missing"


def test_half_written_config(tiny_spm, tmp_path):
    ckpt = copy_of(tiny_spm, tmp_path / "c")
    text = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text(text[: len(text) // 2])
    verdict = inspect_checkpoint(ckpt, settle_seconds=0)
    assert not verdict.complete and "does not parse" in verdict.reason


def test_config_without_architecture(tiny_spm, tmp_path):
    ckpt = copy_of(tiny_spm, tmp_path / "c")
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["architectures"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert "names no architecture" in inspect_checkpoint(ckpt, settle_seconds=0).reason


def test_missing_tokenizer(tiny_spm, tmp_path):
    ckpt = copy_of(tiny_spm, tmp_path / "c")
    for name in ("tokenizer.json", "tokenizer.model"):
        (ckpt / name).unlink()
    assert inspect_checkpoint(ckpt, settle_seconds=0).reason.startswith("no tokenizer")


def test_missing_shard_is_named(sharded, tmp_path):
    ckpt = copy_of(sharded, tmp_path / "final_model")
    shards = sorted(ckpt.glob("model-*.safetensors"))
    shards[1].unlink()
    reason = inspect_checkpoint(ckpt, settle_seconds=0).reason
    assert reason == f"shard 2 of {len(shards)} ({shards[1].name}) is missing"


def test_truncated_shard_reports_sizes(sharded, tmp_path):
    ckpt = copy_of(sharded, tmp_path / "final_model")
    shards = sorted(ckpt.glob("model-*.safetensors"))
    full = shards[-1].stat().st_size
    with open(shards[-1], "r+b") as f:
        f.truncate(full // 3)
    reason = inspect_checkpoint(ckpt, settle_seconds=0).reason
    assert reason.startswith(f"shard {len(shards)} of {len(shards)} ({shards[-1].name}) is truncated: ")
    assert reason.endswith(f"{(full // 3) / 1e3:.1f} KB of {full / 1e3:.1f} KB")


def test_shard_with_garbage_header(tiny_spm, tmp_path):
    ckpt = copy_of(tiny_spm, tmp_path / "c")
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert "unreadable" in inspect_checkpoint(ckpt, settle_seconds=0).reason


def test_pickle_weights_need_opt_in(tiny_spm, tmp_path):
    ckpt = copy_of(tiny_spm, tmp_path / "c")
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    refused = inspect_checkpoint(ckpt, settle_seconds=0)
    assert not refused.complete and "--allow-pickle" in refused.reason
    assert inspect_checkpoint(ckpt, settle_seconds=0, allow_pickle=True).complete


def test_file_growing_during_settle_window_is_not_complete(tiny_spm, tmp_path):
    ckpt = copy_of(tiny_spm, tmp_path / "c")

    def keep_writing():
        for i in range(8):
            time.sleep(0.1)
            (ckpt / "trainer_state.json").write_text("{}" + " " * i)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    verdict = inspect_checkpoint(ckpt, settle_seconds=0.5)
    writer.join()
    assert not verdict.complete and verdict.reason.startswith("still being written: trainer_state.json")


def test_checkpoint_written_shard_by_shard_is_complete_only_at_the_end(sharded, tmp_path):
    """Write files in the order a Trainer does, each in two halves: nothing counts before the last needed byte."""
    dest = tmp_path / "final_model"
    dest.mkdir()
    order = ["config.json", *sorted(p.name for p in sharded.glob("model-*.safetensors")),
             "model.safetensors.index.json", "tokenizer_config.json", "tokenizer.model", "tokenizer.json"]
    for i, name in enumerate(order):
        data = (sharded / name).read_bytes()
        with open(dest / name, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            half = inspect_checkpoint(dest, settle_seconds=0)
            assert not half.complete, f"complete while {name} was half written"
            f.write(data[len(data) // 2:])
        whole = inspect_checkpoint(dest, settle_seconds=0)
        # Weights and index come first; a tokenizer is the last piece needed.
        assert whole.complete == (i >= order.index("tokenizer_config.json") + 1), (name, whole.reason)


def test_content_hash_changes_with_weights_not_with_unrelated_files(tiny_spm, tmp_path):
    ckpt = copy_of(tiny_spm, tmp_path / "c")
    first = checkpoint_sha256(inspect_checkpoint(ckpt, settle_seconds=0))
    (ckpt / "README.md").write_text("notes")
    assert checkpoint_sha256(inspect_checkpoint(ckpt, settle_seconds=0)) == first
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    assert checkpoint_sha256(inspect_checkpoint(ckpt, settle_seconds=0)) != first


def test_cli_check_exit_codes(tiny_spm, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "posttrain", "check", str(tiny_spm), "--settle", "0"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "complete" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "posttrain", "check", str(tmp_path), "--settle", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "config.json is missing" in bad.stdout
