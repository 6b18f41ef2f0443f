"""The watcher under a stream of checkpoints (issue 33's soak): do the right ones get reported, once,
with memory and open files flat?

A real `posttrain watch DIR --jobs 2` (tiny Llamas → F16 by llama.cpp, 6 hellaswag items through
lm-eval, report) sees checkpoints arrive evenly over --over-s seconds, of four kinds in turn:

- complete: written file by file, as a trainer does;
- half-written: config and a truncated weights file first, completed --half-s seconds later;
- deleted: written completely, then deleted once its run has started (mid-conversion);
- identical: a second copy, in another folder, of a complete one (the same content hash).

Then it waits for the watcher's queue to empty and checks: every complete checkpoint (half-written
ones once completed; one of each identical pair) has exactly one `succeeded` record and one report;
a deleted one has none; the watcher's own RSS and open files (descriptors; handles on Windows),
sampled every 2 s, are printed at each quarter of the soak, to show they stay flat.

    python benchmarks/watch_soak.py [--checkpoints 30] [--over-s 600] [--jobs 2]

The full soak takes about 15 minutes on 2 cores; pass fewer checkpoints or less time to shorten it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import crash_harness as h


def _write_like_a_trainer(src: Path, dst: Path, *, hold_s: float = 0.0) -> None:
    """Small files first, weights last; with `hold_s`, the weights stay truncated for that long."""
    dst.mkdir(parents=True)
    weights = src / "model.safetensors"
    for f in sorted(src.iterdir()):
        if f != weights and f.is_file():
            shutil.copy2(f, dst / f.name)
    data = weights.read_bytes()
    with open(dst / weights.name, "wb") as out:
        out.write(data[: len(data) // 3])
        out.flush()
        time.sleep(hold_s)
        out.write(data[len(data) // 3:])


def _sampler(pid: int, samples: list[tuple[float, int, int]], stop: threading.Event) -> None:
    """The watcher's own RSS and open files (its steps' children come and go; a leak would be here)."""
    root = psutil.Process(pid)
    while not stop.is_set():
        try:
            files = root.num_fds() if hasattr(root, "num_fds") else root.num_handles()
            samples.append((time.monotonic(), root.memory_info().rss, files))
        except psutil.Error:
            return
        stop.wait(2.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=30)
    ap.add_argument("--over-s", type=float, default=600.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--half-s", type=float, default=20.0, help="how long a half-written checkpoint stays so")
    ap.add_argument("--root", type=Path, default=None)
    args = ap.parse_args()

    from posttrain.tiny import make_tiny

    root = args.root or Path(tempfile.mkdtemp(prefix="posttrain-soak-"))
    inputs = h.make_inputs(root / "inputs")
    config = root / "watch.toml"
    config.write_text(inputs.config.read_text().replace('quants = ["f16", "q8_0"]', 'quants = ["f16"]')
                      + '[watch]\nsettle_s = 1.0\n')
    watched, home = root / "watched", root / "home"
    watched.mkdir()
    kinds = ["complete", "half", "deleted", "identical"]
    plan = [(i, kinds[i % len(kinds)]) for i in range(args.checkpoints)]
    sources: dict[int, Path] = {}
    for i, kind in plan:
        # an identical one copies the complete one before it; the others are new models
        if kind != "identical":
            sources[i] = make_tiny(root / "sources" / f"m{i}", seed=100 + i)
        else:
            sources[i] = sources[i - 3]
    watcher = subprocess.Popen([sys.executable, "-m", "posttrain", "watch", str(watched), "--config", str(config),
                                "--home", str(home), "--jobs", str(args.jobs)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()
    threading.Thread(target=_sampler, args=(watcher.pid, samples, stop), daemon=True).start()
    started = time.monotonic()
    expected: dict[str, str] = {}  # path → what must become of it
    writers: list[threading.Thread] = []
    deleted_paths: list[Path] = []

    def db_rows() -> list[sqlite3.Row]:
        if not (home / "posttrain.db").exists():
            return []
        con = sqlite3.connect(home / "posttrain.db", timeout=30)
        con.row_factory = sqlite3.Row
        try:
            return con.execute("SELECT * FROM processed_checkpoints").fetchall()
        except sqlite3.Error:
            return []
        finally:
            con.close()

    def delete_when_started(path: Path) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(r["path"] == str(path) and r["status"] == "running" for r in db_rows()):
                time.sleep(2.0)  # into the conversion
                shutil.rmtree(path.parent)
                return
            time.sleep(0.2)
        shutil.rmtree(path.parent, ignore_errors=True)

    try:
        for i, kind in plan:
            time.sleep(max(0.0, started + i * args.over_s / max(1, args.checkpoints) - time.monotonic()))
            dst = watched / f"run{i:02d}" / "final_model"
            expected[str(dst)] = kind
            hold = args.half_s if kind == "half" else 0.0
            t = threading.Thread(target=_write_like_a_trainer, args=(sources[i], dst), kwargs={"hold_s": hold})
            t.start()
            writers.append(t)
            if kind == "deleted":
                t.join()
                deleted_paths.append(dst)
                d = threading.Thread(target=delete_when_started, args=(dst,))
                d.start()
                writers.append(d)
        for t in writers:
            t.join()
        # wait for the queue to empty: every arrived complete checkpoint has a final status
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            status = json.loads((home / "watch.status.json").read_text()) if (home / "watch.status.json").exists() \
                else {}
            rows = db_rows()
            busy = status.get("queue") or status.get("current") or any(
                r["status"] in ("queued", "running") for r in rows)
            if not busy and time.monotonic() - started > args.over_s:
                time.sleep(5)
                if not any(r["status"] in ("queued", "running") for r in db_rows()):
                    break
            time.sleep(2)
    finally:
        stop.set()
        watcher.terminate()
        try:
            watcher.wait(120)
        except subprocess.TimeoutExpired:
            h.kill_tree(watcher.pid)

    rows = db_rows()
    by_path = {r["path"]: r for r in rows}
    problems: list[str] = []
    succeeded = [r for r in rows if r["status"] == "succeeded"]
    identical_pairs = {str(watched / f"run{i:02d}" / "final_model"): str(watched / f"run{i - 3:02d}" / "final_model")
                       for i, kind in plan if kind == "identical"}
    for path, kind in expected.items():
        row = by_path.get(path)
        if kind in ("complete", "half"):
            if row is None or row["status"] != "succeeded":
                problems.append(f"{kind} {path}: {row['status'] if row else 'never processed'}")
        elif kind == "deleted":
            if row is not None and row["status"] == "succeeded":
                problems.append(f"deleted {path}: reported as succeeded")
        elif kind == "identical" and row is not None:  # the store keys records by content hash
            problems.append(f"identical {path}: recorded apart from its twin {identical_pairs[path]}")
    # One succeeded report per distinct complete checkpoint (an identical copy is its twin's run).
    reports = [json.loads(p.read_text()) for p in (home / "runs").glob("*/report.json")]
    good = [d["run"]["id"] for d in reports if d["run"]["status"] == "succeeded"]
    complete = sum(k in ("complete", "half") for k in expected.values())
    if len(good) != complete or len(set(good)) != len(good):
        problems.append(f"{len(good)} succeeded reports ({len(set(good))} runs) for {complete} complete checkpoints")
    missing = [r["path"] for r in succeeded if r["run_id"] not in good]
    if missing:
        problems.append(f"succeeded without a report: {missing[:3]}")
    # Flat means: once the first runs have loaded what a run loads, the later quarters add nothing.
    quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)] for q in (1, 2, 3, 4)] if samples else []
    print(f"checkpoints: {len(plan)} over {args.over_s:.0f} s, --jobs {args.jobs}; "
          f"{sum(k in ('complete', 'half') for _, k in plan)} complete (half-written ones included), "
          f"{len(deleted_paths)} deleted mid-conversion, {sum(k == 'identical' for _, k in plan)} identical copies")
    print(f"succeeded records: {len(succeeded)}, succeeded reports: {len(good)}, all records: {len(rows)}")
    print("watcher RSS MB at 1/4, 1/2, 3/4 and the end of the soak: "
          + ", ".join(f"{q[1] / 1e6:.0f}" for q in quarters)
          + f" (peak {max((x[1] for x in samples), default=0) / 1e6:.0f}); open files: "
          + ", ".join(str(q[2]) for q in quarters) + f" (peak {max((x[2] for x in samples), default=0)})")
    deleted_status = [by_path[str(p)]["status"] if str(p) in by_path else "none" for p in deleted_paths]
    print(f"deleted mid-conversion, their records: {deleted_status}")
    print(f"problems: {len(problems)}; {time.monotonic() - started:.0f} s; work folder {root}")
    for p in problems:
        print("  " + p)
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
