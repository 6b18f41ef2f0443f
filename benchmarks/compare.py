"""How long `posttrain.compare` takes on MMLU-sized data, and how its error bars compare with
lm-eval's unpaired stderr.

    python benchmarks/compare.py [--mmlu /work/shared/data/benchmarks/mmlu/mmlu_test.jsonl] [--n-boot 10000]

Uses the real MMLU test set's 14,042 items and their 57 subjects (as clusters); the per-item
scores are simulated (seeded): a baseline with per-subject difficulty and three quantized variants
that re-answer 0.5 %, 2 % and 6 % of its items (the last two a bit worse). Prints wall time per step, and for each variant the
paired SE (naive, clustered) next to the unpaired SE √(se_new² + se_base²) that lm-eval's per-task
stderr implies.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from posttrain.compare import ItemResult, compare_family

DEFAULT_MMLU = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks" / "mmlu" / "mmlu_test.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mmlu", type=Path, default=DEFAULT_MMLU)
    ap.add_argument("--n-boot", type=int, default=10000)
    args = ap.parse_args()

    with args.mmlu.open(encoding="utf-8") as f:  # not splitlines(): questions contain U+2028
        rows = [json.loads(line) for line in f if line.strip()]
    subjects = [r.get("subject") or r.get("category") or "unknown" for r in rows]
    n = len(rows)
    rng = np.random.default_rng(0)
    names = sorted(set(subjects))
    ease = dict(zip(names, rng.uniform(0.3, 0.8, len(names)), strict=True))
    p = np.array([ease[s] for s in subjects])
    base = (rng.random(n) < p).astype(float)

    def to_items(values: np.ndarray) -> list[ItemResult]:
        return [ItemResult(task=f"mmlu_{subjects[i]}", group="mmlu", doc_id=i, doc_hash=f"h{i}", filter="none",
                           metric="acc", value=float(values[i]), cluster=subjects[i]) for i in range(n)]

    t0 = time.perf_counter()
    base_items = to_items(base)
    variants = {}
    # Each variant re-answers a share of items, slightly worse than the baseline on those items.
    for name, rerolled, worse in (("Q8_0", 0.005, 0.0), ("Q6_K", 0.02, 0.05), ("Q4_K_M", 0.06, 0.15)):
        flips = rng.random(n) < rerolled
        variants[name] = to_items(np.where(flips, rng.random(n) < p * (1 - worse), base).astype(float))
    t_items = time.perf_counter() - t0

    t0 = time.perf_counter()
    doc = compare_family([(k, v, "F16", base_items) for k, v in variants.items()], n_boot=args.n_boot)
    t_cmp = time.perf_counter() - t0

    # A continuous metric on the same size (exercises the paired bootstrap with n_boot resamples).
    t0 = time.perf_counter()
    cont_base = rng.normal(0.5, 0.2, n)
    cont_new = cont_base + rng.normal(-0.002, 0.05, n)
    cont = compare_family([("new", [ItemResult("f1task", None, i, f"h{i}", "none", "f1", float(cont_new[i]))
                                    for i in range(n)],
                            "base", [ItemResult("f1task", None, i, f"h{i}", "none", "f1", float(cont_base[i]))
                                     for i in range(n)])], n_boot=args.n_boot)
    t_boot = time.perf_counter() - t0

    print(f"MMLU items: {n:,} in {len(names)} subjects; 3 variants vs F16")
    print(f"build ItemResult lists: {t_items:.2f} s")
    print(f"compare_family (3 comparisons, Holm, clustered SE): {t_cmp:.2f} s")
    print(f"continuous metric, {n:,} items, paired t + bootstrap ({args.n_boot:,} resamples): {t_boot:.2f} s")
    print()
    print(f"{'variant':8} {'Δ pts':>7} {'unpaired SE':>12} {'paired SE':>10} {'clustered SE':>13} {'p Holm':>8}  verdict")
    for c in doc["comparisons"]:
        unpaired = (c["new"]["se"] ** 2 + c["baseline"]["se"] ** 2) ** 0.5
        d = c["diff"]
        print(f"{c['new_label']:8} {d['mean'] * 100:+7.2f} {unpaired * 100:12.3f} {d['se_naive'] * 100:10.3f} "
              f"{d['se_clustered'] * 100:13.3f} {c['p_adjusted']:8.2g}  {c['verdict']}")
    print()
    for c in doc["comparisons"] + cont["comparisons"]:
        print(c["sentence"])


if __name__ == "__main__":
    main()
