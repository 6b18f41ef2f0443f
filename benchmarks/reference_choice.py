"""The reference a run evaluates (F16 or BF16) as `posttrain run` chooses it, and what the choice buys.

The same checkpoint is run twice through the real pipeline, each in its own home: with the default
(`reference = auto`) and with `--reference f16` (posttrain before the choice). Printed: the machine
profile's answer, the reference each run evaluated and the report's sentence for it, each run's
evaluate wall time and the ratio, and the per-item agreement of the two references' answers (the
chosen ending of each HellaSwag / MMLU item).

    python benchmarks/reference_choice.py /tmp/smollm2 --data /work/shared/data/benchmarks \\
        --hellaswag 200 --mmlu-per-subject 2

The data folder is read where it lies: a small layout of links in a temporary folder gives
posttrain's offline tasks the file names they expect.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def layout(data: Path, work: Path) -> Path:
    """posttrain's offline layout over the shared benchmark files (links, nothing copied)."""
    root = work / "data"
    (root / "hellaswag").mkdir(parents=True, exist_ok=True)
    (root / "hellaswag" / "hellaswag_val.jsonl").symlink_to(
        data / "hellaswag" / "hellaswag_val_subset1000_official_schema.jsonl")
    (root / "mmlu").symlink_to(data / "mmlu")
    return root


def run(checkpoint: Path, home: Path, config: Path, reference: str) -> dict:
    cmd = [sys.executable, "-m", "posttrain", "run", str(checkpoint), "--config", str(config), "--home", str(home),
           "--reference", reference]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"posttrain run --reference {reference} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    from posttrain.compare import items_for_evals
    from posttrain.contracts import step_outputs
    from posttrain.store import Store

    store = Store(home / "posttrain.db")
    (row,) = store.runs.newest_first(1)
    steps = {s["name"]: s for s in store.steps.of_run(row["id"])}
    convert = step_outputs("convert", steps["convert"]["outputs_json"])
    evaluate = step_outputs("evaluate", steps["evaluate"]["outputs_json"])
    (label, ids), = evaluate.evals.items()
    _, items = items_for_evals(store, list(ids))
    return {"reference": convert.reference, "label": label, "evaluate_s": steps["evaluate"]["wall_s"],
            "items": {(i.task, i.doc_hash, i.filter, i.metric): i for i in items}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/benchmarks"))
    ap.add_argument("--hellaswag", type=int, default=200)
    ap.add_argument("--mmlu-per-subject", type=int, default=2)
    args = ap.parse_args()
    os.environ.pop("POSTTRAIN_REFERENCE_TYPE", None)  # the machine profile decides, as for a user

    from posttrain import llamacpp
    from posttrain.checkpoint import checkpoint_dtype

    profile = llamacpp.ensure_profile(say=lambda text: print(text, flush=True))
    print(f"checkpoint: {args.checkpoint} ({checkpoint_dtype(args.checkpoint)})")
    if profile is not None:
        print(f"machine profile: {profile.cpu}; faster reference {profile.reference}, "
              f"BF16/F16 on the probe {profile.speedup('BF16') or float('nan'):.2f}x; threads {profile.threads}, "
              f"n_ubatch {profile.n_ubatch}")
    with tempfile.TemporaryDirectory(prefix="posttrain-reference-") as tmp:
        work = Path(tmp)
        data = layout(args.data, work)
        config = work / "posttrain.toml"
        # `per_subject` cuts each MMLU subject, `limit` every task without subjects (HellaSwag).
        config.write_text(f'quants = ["f16"]\ntasks = ["hellaswag", "mmlu"]\ndata_dir = "{data}"\n'
                          f'limit = {args.hellaswag}\nper_subject = {args.mmlu_per_subject}\n'
                          f'[ollama]\nurl = "http://127.0.0.1:9"\n')
        results = {ref: run(args.checkpoint, work / f"home-{ref}", config, ref) for ref in ("auto", "f16")}
    auto, f16 = results["auto"], results["f16"]
    shared = sorted(set(auto["items"]) & set(f16["items"]))
    accuracy = [k for k in shared if k[3] == "acc"]
    same = sum(auto["items"][k].value == f16["items"][k].value for k in accuracy)
    print()
    print("| run | evaluated | evaluate wall s | × F16 |")
    print("|---|---|---|---|")
    for name, r in (("reference = auto (default)", auto), ("--reference f16", f16)):
        print(f"| {name} | {r['label']} | {r['evaluate_s']:.1f} | {f16['evaluate_s'] / r['evaluate_s']:.2f}× |")
    print()
    print(f"auto chose {auto['reference'].quant}: {auto['reference'].reason}")
    print(f"per-item agreement (acc) of {auto['label']} with {f16['label']}: {same}/{len(accuracy)} = "
          f"{same / max(1, len(accuracy)):.2%}")
    print(json.dumps({"auto_s": auto["evaluate_s"], "f16_s": f16["evaluate_s"], "agreement": same / max(1, len(accuracy)),
                      "n": len(accuracy), "reference": auto["reference"].quant}))


if __name__ == "__main__":
    main()
