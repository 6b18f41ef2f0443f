"""The watcher in-process: finished checkpoints are picked up once, half-written and broken ones are not.

Real files in a real directory, real inotify events (watchdog), the real completeness check; the
handler is a light function that records what it was given, so no conversion runs here.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
from polling import wait_for

from posttrain.errors import PosttrainError
from posttrain.pipeline import Watcher, compile_pattern
from posttrain.store import Store


def sharded_copy(src: Path, dst: Path, n_shards: int = 3) -> Path:
    """`src` (a single-file tiny checkpoint) re-saved as `n_shards` safetensors shards plus an index."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy2(f, dst / f.name)
    tensors = load_file(src / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for i in range(n_shards):
        shard = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: tensors[k].contiguous() for k in names[i::n_shards]}
        save_file(part, dst / shard, metadata={"format": "pt"})
        weight_map.update({k: shard for k in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def write_slowly(src: Path, dst: Path, chunk: int = 64 * 1024, pause: float = 0.05,
                 between_files: float = 0.3) -> float:
    """Copy a checkpoint like a trainer saving it: small files, then each shard in chunks. Returns the
    monotonic time the last shard was closed."""
    dst.mkdir(parents=True)
    shards = sorted(src.glob("*.safetensors"))
    for f in sorted(set(src.iterdir()) - set(shards)):
        shutil.copy2(f, dst / f.name)
        time.sleep(between_files)
    closed = 0.0
    for shard in shards:
        data = shard.read_bytes()
        with open(dst / shard.name, "wb") as out:
            for i in range(0, len(data), chunk):
                out.write(data[i:i + chunk])
                out.flush()
                time.sleep(pause)
        closed = time.monotonic()
        time.sleep(between_files)
    return closed


class Recorder:
    """A handler that remembers each call and when it came."""

    def __init__(self, fail_for: str | None = None):
        self.calls: list[tuple[Path, str, float]] = []
        self.fail_for = fail_for

    def __call__(self, path: Path, sha: str) -> dict:
        self.calls.append((path, sha, time.monotonic()))
        if self.fail_for and self.fail_for in str(path):
            raise PosttrainError(f"unknown architecture in {path.name}: the converter has no NoSuchForCausalLM")
        return {"status": "succeeded", "run_id": f"run-{sha[:8]}"}


def serve_in_thread(watcher: Watcher) -> threading.Thread:
    t = threading.Thread(target=watcher.serve, daemon=True)
    t.start()
    return t


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "home" / "posttrain.db")


@pytest.fixture(scope="module")
def sharded(tiny_spm, tmp_path_factory) -> Path:
    return sharded_copy(tiny_spm, tmp_path_factory.mktemp("sharded") / "src")


def test_pattern_matches_at_any_depth_and_only_whole_names():
    rx = compile_pattern("**/final_model")
    assert rx.match("final_model") and rx.match("exp1/final_model") and rx.match("a/b/c/final_model")
    assert not rx.match("exp1/final_model_old") and not rx.match("exp1/final_model/sub")
    rx = compile_pattern("exp*/checkpoint-?00")
    assert rx.match("exp2/checkpoint-500") and not rx.match("exp2/x/checkpoint-500")


@pytest.mark.parametrize("events", [True, False], ids=["inotify", "polling"])
def test_a_checkpoint_written_shard_by_shard_triggers_only_once_complete(tmp_path, store, sharded, events):
    watched = tmp_path / "runs"
    watched.mkdir()
    handler = Recorder()
    stop = threading.Event()
    watcher = Watcher([watched], handler, store=store, settle_s=0.5, poll_interval_s=300 if events else 1.0,
                      use_events=events, stop_event=stop)
    thread = serve_in_thread(watcher)
    try:
        closed = write_slowly(sharded, watched / "exp1" / "final_model")
        assert handler.calls == [], "triggered before the last shard was written"
        assert wait_for(lambda: handler.calls, timeout=15), "not triggered within 15 s of the last shard"
        path, sha, at = handler.calls[0]
        assert path == watched / "exp1" / "final_model"
        assert at >= closed
        time.sleep(1.5)
        assert len(handler.calls) == 1
    finally:
        stop.set()
        thread.join(timeout=30)
    row = store.query("SELECT path, run_id, status FROM processed_checkpoints WHERE checkpoint_sha256=?", (sha,))[0]
    assert (row["path"], row["status"], row["run_id"]) == (str(path), "succeeded", f"run-{sha[:8]}")


def _broken_checkpoints(root: Path, good: Path) -> None:
    # config.json cut short mid-write and never finished
    bad = root / "cut" / "final_model"
    shutil.copytree(good, bad)
    (bad / "config.json").write_text('{"architectures": ["LlamaFor')
    # a shard whose header is garbage
    bad = root / "garbage" / "final_model"
    shutil.copytree(good, bad)
    (bad / "model.safetensors").write_bytes(b"\xff" * 4096)
    # a directory where a weight file should be: cannot be read as one
    bad = root / "unreadable" / "final_model"
    shutil.copytree(good, bad)
    (bad / "model.safetensors").unlink()
    (bad / "model.safetensors").mkdir()
    # complete on disk, but an architecture nothing can convert: the handler (the pipeline) fails it
    bad = root / "unknown-arch" / "final_model"
    shutil.copytree(good, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["architectures"] = ["NoSuchForCausalLM"]
    (bad / "config.json").write_text(json.dumps(cfg))


def test_bad_checkpoints_are_logged_with_their_reason_and_good_ones_still_served(tmp_path, store, tiny_spm, caplog):
    watched = tmp_path / "runs"
    _broken_checkpoints(watched, tiny_spm)
    shutil.copytree(tiny_spm, watched / "good" / "final_model")
    handler = Recorder(fail_for="unknown-arch")
    caplog.set_level(logging.INFO, logger="posttrain")
    results = Watcher([watched], handler, store=store, settle_s=0.2).run_once()

    by_dir = {Path(r["path"]).parent.name: r for r in results}
    assert set(by_dir) == {"good", "unknown-arch"}
    assert by_dir["good"]["status"] == "succeeded"
    assert by_dir["unknown-arch"]["status"] == "failed"
    text = caplog.text
    assert "cut/final_model: config.json does not parse as JSON" in text
    assert "garbage/final_model: model.safetensors is unreadable: header length" in text
    assert "unreadable/final_model" in text and "model.safetensors" in text
    assert "NoSuchForCausalLM" in text
    statuses = {r["path"]: r["status"] for r in store.query("SELECT path, status FROM processed_checkpoints")}
    assert statuses == {str(watched / "good" / "final_model"): "succeeded",
                        str(watched / "unknown-arch" / "final_model"): "failed"}


def test_each_checkpoint_is_processed_once_also_across_restarts(tmp_path, store, tiny_spm):
    watched = tmp_path / "runs"
    shutil.copytree(tiny_spm, watched / "exp1" / "final_model")
    first = Recorder()
    assert len(Watcher([watched], first, store=store, settle_s=0.1).run_once()) == 1
    assert len(first.calls) == 1

    # A restarted watcher (new process state, same store) finds it processed, even under another path.
    shutil.copytree(tiny_spm, watched / "exp1-copy" / "final_model")
    shutil.copytree(tiny_spm, watched / "nested" / "deeper" / "final_model")
    second = Recorder()
    assert Watcher([watched], second, store=Store(store.path), settle_s=0.1).run_once() == []
    assert second.calls == []

    # New content is a new checkpoint.
    cfg = watched / "exp2" / "final_model"
    shutil.copytree(tiny_spm, cfg)
    (cfg / "generation_config.json").write_text('{"temperature": 0.5}')
    third = Recorder()
    Watcher([watched], third, store=Store(store.path), settle_s=0.1).run_once()
    assert [c[0] for c in third.calls] == [cfg]


def test_a_run_cut_short_is_taken_up_again_on_the_next_start(tmp_path, store, tiny_spm):
    watched = tmp_path / "runs"
    shutil.copytree(tiny_spm, watched / "exp1" / "final_model")

    def interrupted(path, sha):
        return {"status": "interrupted", "run_id": "r1"}

    Watcher([watched], interrupted, store=store, settle_s=0.1).run_once()
    again = Recorder()
    Watcher([watched], again, store=Store(store.path), settle_s=0.1).run_once()
    assert len(again.calls) == 1


def test_with_jobs_2_two_checkpoints_are_processed_at_the_same_time(tmp_path, store, tiny_spm):
    watched = tmp_path / "runs"
    for name in ("a", "b"):
        shutil.copytree(tiny_spm, watched / name / "final_model")
        (watched / name / "final_model" / "generation_config.json").write_text(json.dumps({"name": name}))
    spans = {}

    def slow(path, sha):
        start = time.monotonic()
        time.sleep(1.0)
        spans[path.parent.name] = (start, time.monotonic())
        return {"status": "succeeded"}

    Watcher([watched], slow, store=store, settle_s=0.1, jobs=2).run_once()
    (a0, a1), (b0, b1) = spans["a"], spans["b"]
    assert a0 < b1 and b0 < a1, "the two runs did not overlap"

    one_at_a_time = {}

    def serial(path, sha):
        one_at_a_time[path.parent.name] = time.monotonic()
        time.sleep(0.5)
        return {"status": "succeeded"}

    for name in ("a", "b"):
        (watched / name / "final_model" / "generation_config.json").write_text(json.dumps({"name": name, "v": 2}))
    Watcher([watched], serial, store=store, settle_s=0.1).run_once()
    assert abs(one_at_a_time["a"] - one_at_a_time["b"]) >= 0.5
