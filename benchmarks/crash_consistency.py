"""Crash consistency the way SQLite tests it (issue 33): kill -9 at N instants, an I/O error at every write.

A full `posttrain run` (tiny Llama, F16 and Q8_0 by llama.cpp, a tiny baseline converted too, 6
hellaswag items through lm-eval, compare, report) runs once cleanly; its wall time and its writes
(atomic file writes and store transactions, counted across the process tree) are measured. Then, each
in a fresh home:

- for N instants evenly spread over that wall time: the same run, killed with its whole process tree
  (kill -9) at the instant, then run again to completion;
- for every write k (or --every-write STEP: every STEP-th), alternately ENOSPC and EIO (--errors
  swapped: the other one; both: each) at the k-th
  write, then the same command again with the fault cleared.

Each case must end with the clean run's report (times, memory, paths aside), `PRAGMA
integrity_check` ok, no temporary file left, no process left, every output complete; a fault must
end the faulty run with exit 1 and a line naming the file. See tests/crash_harness.py.

    python benchmarks/crash_consistency.py [--kills 50] [--every-write 1] [--max-faults 0] [--root DIR]

Each case costs about one run (≈ 100 s on 2 shared cores), so the full sweep takes hours: pass
--kills and --max-faults to bound it. Prints one line per case, then the counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import crash_harness as h


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50, help="instants to kill at (default 50)")
    ap.add_argument("--every-write", type=int, default=1, metavar="STEP",
                    help="inject a fault at every STEP-th write (default 1: every write; 0: none)")
    ap.add_argument("--max-faults", type=int, default=0, help="at most this many fault cases, spread (0: no bound)")
    ap.add_argument("--errors", choices=("alternate", "swapped", "both"), default="alternate",
                    help="which error at write k: ENOSPC at odd k and EIO at even k (alternate, the default), "
                         "the other one (swapped: run after alternate, every write has had both), or both")
    ap.add_argument("--root", type=Path, default=None, help="work folder (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep every case's home, not only the failing ones")
    args = ap.parse_args()

    root = args.root or Path(tempfile.mkdtemp(prefix="posttrain-crash-"))
    started = time.monotonic()
    inputs = h.make_inputs(root / "inputs")
    clean = h.clean_run(inputs, root / "clean")
    print(f"clean run: {clean.wall_s:.1f} s, {len(clean.writes)} writes "
          f"({sum('posttrain.db' in w[2] for w in clean.writes)} store transactions)", flush=True)
    # The kill cases run warm and without the write counting: their instants are spread over such a run.
    span = min(clean.wall_s, h.warm_wall_s(inputs, root / "warm")) if args.kills else clean.wall_s
    if args.kills:
        print(f"a run as the kill cases make it: {span:.1f} s; the instants are spread over it", flush=True)

    cases: list[h.Case] = []

    def record(case: h.Case, home: Path) -> None:
        cases.append(case)
        verdict = "ok" if case.ok else "FAIL"
        print(f"  {case.kind:5s} {case.detail}: {verdict} ({case.seconds:.0f} s)", flush=True)
        for problem in case.problems:
            print(f"      {problem}", flush=True)
        if case.ok and not args.keep:
            h.discard(home)

    for i, at in enumerate(h.spread(span, args.kills)):
        home = root / f"kill-{i:02d}"
        record(h.kill_case(inputs, home, at, clean), home)

    ks = list(range(1, len(clean.writes) + 1, args.every_write)) if args.every_write > 0 else []
    if args.max_faults and len(ks) > args.max_faults:
        ks = [ks[round(j * (len(ks) - 1) / max(1, args.max_faults - 1))] for j in range(args.max_faults)]
    for j, k in enumerate(ks):
        first, other = ("ENOSPC", "EIO") if j % 2 == 0 else ("EIO", "ENOSPC")
        errors = {"alternate": [first], "swapped": [other], "both": [first, other]}[args.errors]
        for error in errors:
            home = root / f"fault-{k:03d}-{error}"
            record(h.fault_case(inputs, home, k, error, clean), home)

    kills = [c for c in cases if c.kind == "kill"]
    faults = [c for c in cases if c.kind == "fault"]
    live = sum("had ended" not in c.detail for c in kills)
    print(f"instants tried: {len(kills)} ({live} while the run was live), "
          f"faults injected: {len(faults)} of {len(clean.writes)} writes, "
          f"failures found: {sum(not c.ok for c in cases)} "
          f"(kills {sum(not c.ok for c in kills)}, faults {sum(not c.ok for c in faults)}); "
          f"{time.monotonic() - started:.0f} s in all, work folder {root}")
    return 0 if all(c.ok for c in cases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
