"""The helper `PosttrainCallback` starts: wait until the checkpoint is complete, then become the
posttrain command (exec, so the PID the callback logged is the run's PID).

    python -m posttrain.integrations._handoff --checkpoint DIR --since EPOCH --timeout S -- CMD...

"Complete" is `inspect_checkpoint`'s verdict (every shard as long as its header says, quiet for the
settle window) and weights written after `--since` (the start of training), so a checkpoint left in
the same directory by an earlier run is not mistaken for this one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def fresh_and_complete(checkpoint: Path, since: float, settle_s: float) -> tuple[bool, str]:
    from posttrain.checkpoint import inspect_checkpoint

    verdict = inspect_checkpoint(checkpoint, settle_seconds=settle_s)
    if not verdict.complete:
        return False, verdict.reason
    newest = max(f.stat().st_mtime for f in verdict.weight_files)
    if newest + 1.0 < since:  # 1 s of slack for coarse filesystem timestamps
        return False, "its weights predate this training run"
    return True, "complete"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posttrain.integrations._handoff")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--since", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command:
        parser.error("no command after --")
    deadline = time.monotonic() + ns.timeout
    last_reason = None
    while True:
        ok, reason = fresh_and_complete(ns.checkpoint, ns.since, ns.settle)
        if ok:
            break
        if reason != last_reason:
            print(f"{_stamp()} waiting for {ns.checkpoint}: {reason}", flush=True)
            last_reason = reason
        if time.monotonic() >= deadline:
            print(f"{_stamp()} gave up after {ns.timeout:g} s: {ns.checkpoint} is not a complete checkpoint "
                  f"({reason}); run `posttrain run {ns.checkpoint}` yourself once it is saved", flush=True)
            return 2
        time.sleep(ns.poll)
    print(f"{_stamp()} {ns.checkpoint} is complete; running: {' '.join(command)}", flush=True)
    sys.stdout.flush()
    try:
        os.execvp(command[0], command)
    except OSError as e:
        print(f"{_stamp()} cannot run {command[0]}: {e.strerror}", flush=True)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
