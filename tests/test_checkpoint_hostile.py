"""The detector against hostile checkpoints: odd but well-formed JSON, names that lead outside the
checkpoint, arbitrary bytes. Its contract: a verdict, never an exception, and never "complete" for
a checkpoint that refers to files outside itself.

The checkpoints here are written by hand (config, a JSON tokenizer, safetensors bytes): no torch,
so hypothesis can try many of them in a few seconds.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.checkpoint import inspect_checkpoint

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def safetensors_bytes(header: object, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def valid_shard(n_bytes: int = 8) -> bytes:
    return safetensors_bytes({"w": {"dtype": "U8", "shape": [n_bytes], "data_offsets": [0, n_bytes]}},
                             b"\0" * n_bytes)


def write_checkpoint(root: Path, *, config: object = None, weights: dict[str, bytes] | None = None,
                     index: object = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama"} if config is None else config))
    (root / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
    for name, data in (weights if weights is not None else {"model.safetensors": valid_shard()}).items():
        (root / name).write_bytes(data)
    if index is not None:
        (root / "model.safetensors.index.json").write_text(json.dumps(index))
    return root


def test_the_hand_written_checkpoint_is_complete(tmp_path):
    verdict = inspect_checkpoint(write_checkpoint(tmp_path / "c"), settle_seconds=0)
    assert verdict.complete, verdict.reason


@pytest.mark.parametrize(("header", "reason"), [
    ([1, 2, 3], "is a list, not an object"),
    ("text", "is a str, not an object"),
    ({"w": {"data_offsets": ["0", "8"]}}, "no valid data_offsets"),
    ({"w": {"data_offsets": [8, 0]}}, "no valid data_offsets"),
    ({"w": {"data_offsets": [0, -8]}}, "no valid data_offsets"),
    ({"w": {"data_offsets": [0, True]}}, "no valid data_offsets"),
    ({"w": {"data_offsets": [0, 1e300]}}, "no valid data_offsets"),
    ({"w": [0, 8]}, "no valid data_offsets"),
])
def test_odd_safetensors_headers_are_unreadable_not_a_crash(tmp_path, header, reason):
    ckpt = write_checkpoint(tmp_path / "c", weights={"model.safetensors": safetensors_bytes(header, b"\0" * 8)})
    verdict = inspect_checkpoint(ckpt, settle_seconds=0)
    assert not verdict.complete and "model.safetensors is unreadable" in verdict.reason and reason in verdict.reason


@pytest.mark.parametrize(("index", "reason"), [
    ([], "has no weight_map"),
    ({"weight_map": ["model-1.safetensors"]}, "has no weight_map"),
    ({"weight_map": {}}, "has no weight_map"),
    ({"weight_map": {"w": 3}}, "not a file name"),
    ({"weight_map": {"w": None}}, "not a file name"),
    ({"weight_map": {"w": ["model-1.safetensors"]}}, "not a file name"),
    ({"weight_map": {"w": {"file": "model-1.safetensors"}}}, "not a file name"),
    ({"weight_map": {"w": "model-1.bin"}}, "'model-1.bin', which is not a .safetensors file"),
    ({"weight_map": {"w": "config.json"}}, "not a .safetensors file"),
])
def test_odd_index_files_are_incomplete_with_a_reason(tmp_path, index, reason):
    ckpt = write_checkpoint(tmp_path / "c", weights={"model-1.safetensors": valid_shard()}, index=index)
    verdict = inspect_checkpoint(ckpt, settle_seconds=0)
    assert not verdict.complete and reason in verdict.reason


@pytest.mark.parametrize("name", ["../outside.safetensors", "../../outside.safetensors", "sub/../../outside.safetensors"])
def test_shard_names_leading_out_of_the_checkpoint_are_refused(tmp_path, name):
    # The named file exists and is a perfect shard: only where it lies makes the checkpoint incomplete.
    ckpt = tmp_path / "a" / "b" / "c"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / name).resolve().write_bytes(valid_shard())
    write_checkpoint(ckpt, weights={}, index={"weight_map": {"w": name}})
    verdict = inspect_checkpoint(ckpt, settle_seconds=0)
    assert not verdict.complete and "lies outside the checkpoint directory" in verdict.reason


def test_absolute_shard_name_is_refused(tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(valid_shard())
    ckpt = write_checkpoint(tmp_path / "c", weights={}, index={"weight_map": {"w": str(outside)}})
    verdict = inspect_checkpoint(ckpt, settle_seconds=0)
    assert not verdict.complete and "lies outside" in verdict.reason


def test_symlinked_shard_leading_out_is_refused(tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(valid_shard())
    ckpt = write_checkpoint(tmp_path / "c", weights={}, index={"weight_map": {"w": "model-1.safetensors"}})
    (ckpt / "model-1.safetensors").symlink_to(outside)
    verdict = inspect_checkpoint(ckpt, settle_seconds=0)
    assert not verdict.complete and "lies outside" in verdict.reason


def test_symlinked_single_file_weights_leading_out_are_refused(tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(valid_shard())
    ckpt = write_checkpoint(tmp_path / "c", weights={})
    (ckpt / "model.safetensors").symlink_to(outside)
    verdict = inspect_checkpoint(ckpt, settle_seconds=0)
    assert not verdict.complete and "leads outside the checkpoint directory" in verdict.reason


def test_hugging_face_cache_snapshot_links_into_its_own_blobs_are_accepted(tmp_path):
    # The hub cache's layout: snapshots/REV/<file> -> ../../blobs/<sha>.
    repo = tmp_path / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    staged = write_checkpoint(tmp_path / "staged")
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(staged.iterdir())):
        (blobs / f"sha{i}").write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("../../blobs") / f"sha{i}")
    verdict = inspect_checkpoint(snap, settle_seconds=0)
    assert verdict.complete, verdict.reason


def test_a_shard_name_with_a_line_break_stays_on_one_line(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c", weights={}, index={"weight_map": {"w": "a\nb.safetensors"}})
    verdict = inspect_checkpoint(ckpt, settle_seconds=0)
    assert verdict.reason == "'a\\nb.safetensors' is missing"


def test_architectures_given_as_a_string_is_refused(tmp_path):
    ckpt = write_checkpoint(tmp_path / "c", config={"architectures": "LlamaForCausalLM"})
    verdict = inspect_checkpoint(ckpt, settle_seconds=0)
    assert not verdict.complete and "not a list of class names" in verdict.reason


# ---------------------------------------------------------------- properties


@FAST
@given(data=st.binary(max_size=300))
def test_any_bytes_as_the_weights_give_a_verdict(data):
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_checkpoint(Path(d) / "c", weights={"model.safetensors": data})
        verdict = inspect_checkpoint(ckpt, settle_seconds=0)
        assert isinstance(verdict.reason, str) and verdict.reason and "\n" not in verdict.reason


tensor_infos = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["F16", "U8", 3, None]),
    "shape": st.lists(st.integers(-2, 8), max_size=3) | json_values,
    "data_offsets": st.lists(st.integers(-4, 16) | st.floats(allow_nan=False) | st.text(max_size=2) | st.booleans(),
                             max_size=3) | json_values,
})


@FAST
@given(header=st.dictionaries(st.text(max_size=8), tensor_infos | json_values, max_size=4) | json_values,
       data=st.binary(max_size=24))
def test_any_json_header_gives_a_verdict_and_complete_means_exact_length(header, data):
    with tempfile.TemporaryDirectory() as d:
        blob = safetensors_bytes(header, data)
        ckpt = write_checkpoint(Path(d) / "c", weights={"model.safetensors": blob})
        verdict = inspect_checkpoint(ckpt, settle_seconds=0)
        if verdict.complete:
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            assert len(blob) == 8 + len(json.dumps(header).encode()) + max(ends, default=0)


index_like = st.fixed_dictionaries({"weight_map": st.dictionaries(st.text(max_size=8), json_values | st.just(
    "model-1.safetensors"), max_size=3) | json_values}, optional={"metadata": json_values})
config_like = st.fixed_dictionaries({}, optional={"architectures": json_values | st.just(["LlamaForCausalLM"]),
                                                  "model_type": json_values})


@FAST
@given(config=json_values | config_like, index=json_values | index_like)
def test_any_json_config_and_index_give_a_verdict(config, index):
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_checkpoint(Path(d) / "c", config=config, weights={"model-1.safetensors": valid_shard()},
                                index=index)
        verdict = inspect_checkpoint(ckpt, settle_seconds=0)
        assert isinstance(verdict.reason, str)


segments = st.sampled_from(["..", ".", "sub", "x", "", "/", "model-1.safetensors"])
shard_names = st.one_of(
    st.lists(segments, min_size=1, max_size=5).map(lambda parts: "/".join(parts) + ".safetensors"),
    st.text(max_size=20),
    st.just("model-1.safetensors"),
)


@FAST
@given(names=st.lists(shard_names, min_size=1, max_size=3))
def test_never_complete_when_a_shard_name_leads_outside(names):
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "a" / "b" / "c"
        (ckpt / "sub").mkdir(parents=True)
        root = ckpt.resolve()
        # Put a perfect shard wherever each name points, inside or out (within the temp dir), so the
        # only thing that can make the checkpoint incomplete is where a shard lies.
        for name in names:
            try:
                target = (ckpt / name).resolve()
            except (ValueError, OSError, RuntimeError):
                continue
            if target.is_relative_to(Path(d).resolve()) and name.endswith(".safetensors"):
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(valid_shard())
                except OSError:  # names that contradict each other (a file where another needs a folder)
                    continue
        write_checkpoint(ckpt, weights={}, index={"weight_map": {f"t{i}": n for i, n in enumerate(names)}})
        verdict = inspect_checkpoint(ckpt, settle_seconds=0)
        assert "\n" not in verdict.reason
        if verdict.complete:
            for f in verdict.weight_files:
                resolved = f.resolve()
                assert resolved.is_relative_to(root) and resolved != root
                assert os.path.isfile(resolved)
