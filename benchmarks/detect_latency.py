"""How long from "last shard closed" to "run started": file events vs polling.

A tiny Llama is re-saved as 3 safetensors shards and copied into a watched directory the way a
trainer writes it (small files, then each shard in chunks); the watcher's handler notes the time
it is called. Each trial uses a fresh directory name, so every trial is a new checkpoint.

    python benchmarks/detect_latency.py [--trials 5] [--settle 1.0] [--poll-interval 5]

Prints the median and max latency per mode and checks that no trial fired before the checkpoint
was complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path


def sharded_tiny(out: Path) -> Path:
    from safetensors.torch import load_file, save_file

    from posttrain.tiny import make_tiny

    src = make_tiny(out / "single")
    dst = out / "sharded"
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy2(f, dst / f.name)
    tensors = load_file(src / "model.safetensors")
    names, weight_map = sorted(tensors), {}
    for i in range(3):
        shard = f"model-{i + 1:05d}-of-00003.safetensors"
        part = {k: tensors[k].contiguous() for k in names[i::3]}
        save_file(part, dst / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def write_like_a_trainer(src: Path, dst: Path) -> float:
    dst.mkdir(parents=True)
    shards = sorted(src.glob("*.safetensors"))
    for f in sorted(set(src.iterdir()) - set(shards)):
        shutil.copy2(f, dst / f.name)
        time.sleep(0.1)
    closed = 0.0
    for shard in shards:
        data = shard.read_bytes()
        with open(dst / shard.name, "wb") as out:
            for i in range(0, len(data), 128 * 1024):
                out.write(data[i:i + 128 * 1024])
                out.flush()
                time.sleep(0.02)
        closed = time.monotonic()
        time.sleep(0.2)
    return closed


def trial_series(src: Path, work: Path, *, events: bool, settle: float, poll: float, trials: int) -> list[float]:
    from posttrain.pipeline._watcher import Watcher
    from posttrain.store import Store

    watched = work / ("events" if events else "polling")
    watched.mkdir()
    started: dict[str, float] = {}
    done = threading.Event()

    def handler(path: Path, sha: str) -> dict:
        started[path.parent.name] = time.monotonic()
        done.set()
        return {"status": "succeeded"}

    stop = threading.Event()
    watcher = Watcher([watched], handler, store=Store(work / f"{watched.name}.db"), settle_s=settle,
                      poll_interval_s=300.0 if events else poll, use_events=events, stop_event=stop)
    thread = threading.Thread(target=watcher.serve, daemon=True)
    thread.start()
    time.sleep(0.5)
    latencies = []
    try:
        for i in range(trials):
            done.clear()
            # Each trial a distinct checkpoint: a different generation_config makes a different hash.
            staged = work / f"staged-{events}-{i}"
            shutil.copytree(src, staged)
            (staged / "generation_config.json").write_text(json.dumps({"trial": i, "events": events}))
            name = f"exp{i}"
            closed = write_like_a_trainer(staged, watched / name / "final_model")
            if not done.wait(timeout=poll + settle + 60):
                raise SystemExit(f"trial {i}: never triggered")
            if started[name] < closed:
                raise SystemExit(f"trial {i}: triggered before the last shard was closed")
            latencies.append(started[name] - closed)
    finally:
        stop.set()
        thread.join(timeout=30)
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--settle", type=float, default=1.0, help="quiet seconds before a checkpoint counts (default 1)")
    ap.add_argument("--poll-interval", type=float, default=5.0, help="rescan interval for the polling mode")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="posttrain-latency-") as tmp:
        work = Path(tmp)
        src = sharded_tiny(work)
        print(f"checkpoint: 3 shards, {sum(f.stat().st_size for f in src.iterdir()) / 1e6:.1f} MB; "
              f"settle {args.settle:g} s; {args.trials} trials per mode")
        print(f"{'mode':<28} {'median s':>9} {'max s':>7}")
        for events in (True, False):
            lat = trial_series(src, work, events=events, settle=args.settle, poll=args.poll_interval,
                               trials=args.trials)
            mode = "inotify events" if events else f"polling every {args.poll_interval:g} s"
            print(f"{mode:<28} {statistics.median(lat):>9.2f} {max(lat):>7.2f}")


if __name__ == "__main__":
    main()
