"""Reports from a real store, populated the way the pipeline does it (variants with the convert
manifest, evaluations with per-item rows linked through run_evals, steps, and compare.json written
by posttrain.compare), through the Python API and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from statsmodels.stats.proportion import proportion_confint

from posttrain.report import report_from_store, write_index
from posttrain.store import Store, dumps, utcnow

RUN_ID = "20261125-0930-ab12"
MODEL = "smollm2-ft"
HOSTILE = "<img src=x onerror=alert(1)>"
# Per label: the chance that an item is answered right (mmlu leaf tasks, gsm8k).
ACCURACY = {f"{MODEL}-F16": 0.46, f"{MODEL}-Q8_0": 0.45, f"{MODEL}-Q4_K_M": 0.38, "baseline": 0.44}
SUBJECTS = ("mmlu_anatomy", "mmlu_astronomy")


def _manifest(ckpt_sha: str, variants: list[dict]) -> dict:
    """A `posttrain.convert/1` manifest as convert_checkpoint writes it."""
    entries = {}
    for v in variants:
        kld, top1 = {"F16": (0.0, 1.0), "Q8_0": (0.00106, 0.9912), "Q4_K_M": (0.1186, 0.8731)}[v["quant"]]
        entries[v["quant"]] = {"quant": v["quant"], "path": Path(v["path"]).name, "sha256": v["sha256"],
                               "size_bytes": v["size_bytes"], "seconds": 1.2, "made_by": "convert_hf_to_gguf.py",
                               "header": {}, "verification": {"vs_f16": {"mean_kld": kld, "max_kld": kld * 4,
                                                                          "top1_agreement": top1}}}
    return {"schema": "posttrain.convert/1", "model_name": MODEL, "checkpoint": "/train/out/checkpoint-1200",
            "checkpoint_sha256": ckpt_sha, "architecture": "LlamaForCausalLM",
            "toolchain": {"llama_cpp_python": "0.3.36", "converter": "sdist"}, "options": {}, "variants": entries}


def _items(label: str, task: str, group: str | None, n: int, rng: random.Random) -> list[dict]:
    rows = []
    p = ACCURACY[label]
    for doc_id in range(n):
        right = rng.random() < p
        gold = "B" if group else "42"
        answer = gold if right else ("C" if group else "41")
        if label.endswith("Q4_K_M") and doc_id == 0:
            answer = HOSTILE  # an untrusted model answer
        for flt in (["none"] if group else ["strict-match", "flexible-extract"]):
            rows.append({"task": task, "task_group": group, "doc_id": doc_id,
                         "doc_hash": hashlib.sha256(f"{task}/{doc_id}".encode()).hexdigest()[:16], "filter": flt,
                         "metric": "acc" if group else "exact_match", "value": 1.0 if answer == gold else 0.0,
                         "question": f"Question {doc_id} of {task}?", "target": gold, "response": answer,
                         "cluster": task if group else None,
                         "think_sha256": hashlib.sha256(b"hidden").hexdigest() if doc_id == 1 else None})
    return rows


def _save_eval(db, label: str, model_id: str, task: str, items: list[dict]) -> int:
    cur = db.execute(
        "INSERT INTO evals (cache_key, model_id, backend, task, task_hash, task_version, n_shot, selection_json,"
        " gen_args_json, harness_version, aggregates_json, env_json, seconds, tokens, n_items, output_dir,"
        " created_at) VALUES (?, ?, 'posttrain-llamacpp', ?, ?, '1.0', 0, '{}', '{}', '0.4.13', '{}', ?, 12.5,"
        " 4000, ?, NULL, ?)",
        (f"{label}/{task}", model_id, task, hashlib.sha256(task.encode()).hexdigest()[:12],
         dumps({"lm_eval_version": "0.4.13", "torch": "2.13.0"}), len(items), utcnow()))
    eval_id = cur.lastrowid
    cols = list(items[0])
    db.executemany(f"INSERT INTO items (eval_id, {', '.join(cols)}) VALUES (?, {', '.join('?' * len(cols))})",
                   [(eval_id, *(i[c] for c in cols)) for i in items])
    return eval_id


def populate(home: Path, *, failed_step: str | None = None, converted=None) -> tuple[Store, Path]:
    """`converted`: a real posttrain.convert result to take the variants and manifest from."""
    store = Store(home / "posttrain.db")
    run_dir = home / "runs" / RUN_ID
    run_dir.mkdir(parents=True)
    if converted is not None:
        ckpt_sha = converted.checkpoint_sha256
        variants = [{"quant": v.quant, "path": str(v.path), "sha256": v.sha256, "size_bytes": v.size_bytes}
                    for v in converted.variants]
        manifest = json.loads(Path(converted.manifest_path).read_text())
    else:
        ckpt_sha = "e" * 64
        variants = [{"quant": q, "path": str(home / "gguf" / MODEL / f"{MODEL}-{q}.gguf"),
                     "sha256": hashlib.sha256(q.encode()).hexdigest(), "size_bytes": size}
                    for q, size in (("F16", 270_898_784), ("Q8_0", 144_811_104), ("Q4_K_M", 105_472_096))]
        manifest = _manifest(ckpt_sha, variants)
    rng = random.Random(7)
    ids: dict[str, list[int]] = {}
    with store.connect() as db:
        db.execute("INSERT INTO runs (id, checkpoint, checkpoint_sha256, model_name, baseline, config_json, status,"
                   " created_at, run_dir) VALUES (?, ?, ?, ?, ?, '{}', ?, ?, ?)",
                   (RUN_ID, "/train/out/checkpoint-1200", ckpt_sha, MODEL, "/models/smollm2-base",
                    "failed" if failed_step else "running", "2026-11-25T09:30:02.000+00:00", str(run_dir)))
        for v in variants:
            db.execute("INSERT INTO variants (sha256, path, quant, model_name, checkpoint_sha256, size_bytes,"
                       " toolchain, manifest_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (v["sha256"], v["path"], v["quant"], MODEL, ckpt_sha, v["size_bytes"],
                        "llama-cpp-python 0.3.36", dumps(manifest), utcnow()))
        labels = [(f"{MODEL}-{v['quant']}", v["path"], "candidate") for v in variants]
        labels.append(("baseline", str(home / "gguf" / "base" / "base-F16.gguf"), "baseline"))
        for label, model_id, role in labels:
            ids[label] = []
            for task in SUBJECTS:
                ids[label].append(_save_eval(db, label, model_id, task, _items(label, task, "mmlu", 60, rng)))
            ids[label].append(_save_eval(db, label, model_id, "gsm8k", _items(label, "gsm8k", None, 40, rng)))
            for eid in ids[label]:
                db.execute("INSERT INTO run_evals (run_id, role, label, eval_id) VALUES (?, ?, ?, ?)",
                           (RUN_ID, role, label, eid))
        for i, name in enumerate(("detect", "convert", "register", "baseline", "evaluate", "evaluate_baseline",
                                  "compare", "report", "notify")):
            status, error = "done", None
            if failed_step == name:
                status, error = "failed", "llama_model_load: error loading model: tensor 'blk.0.attn_q' has wrong shape"
            db.execute("INSERT INTO steps (run_id, name, status, attempts, started_at, finished_at, wall_s,"
                       " peak_rss_bytes, error) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)",
                       (RUN_ID, name, status, utcnow(), utcnow(), 1.5 + 10 * i, 100_000_000 * (i + 1), error))
    if not failed_step:
        from posttrain.compare import compare_family, load_items

        base = load_items("eval:" + ",".join(map(str, ids["baseline"])), store=store)[1]
        pairs = [(label, load_items("eval:" + ",".join(map(str, ids[label])), store=store)[1], "baseline", base)
                 for label in sorted(ids) if label != "baseline"]
        doc = compare_family(pairs, seed=0, n_boot=500)
        (run_dir / "compare.json").write_text(json.dumps(doc, indent=2))
    return store, run_dir


def test_report_from_store_shows_item_level_scores_and_manifest_quality(tmp_path):
    store, run_dir = populate(tmp_path)
    paths = report_from_store(store, RUN_ID)
    assert {p.parent for p in paths.values()} == {run_dir}

    doc = json.loads(paths["json"].read_text())
    compare = json.loads((run_dir / "compare.json").read_text())
    assert doc["compare"] == compare
    # The mmlu score of Q4_K_M is one row over both leaf-task evaluations, with a Wilson CI.
    [q4] = [e for e in doc["evals"] if e["label"] == f"{MODEL}-Q4_K_M" and e["task"] == "mmlu"]
    values = [r["value"] for r in store.query(
        "SELECT i.value FROM items i JOIN run_evals re ON re.eval_id = i.eval_id "
        "WHERE re.label = ? AND i.task_group = 'mmlu'", (f"{MODEL}-Q4_K_M",))]
    assert q4["n"] == len(values) == 120
    assert q4["value"] == pytest.approx(sum(values) / len(values))
    assert q4["ci"] == pytest.approx(list(proportion_confint(int(sum(values)), len(values), method="wilson")))
    assert q4["quant"] == "Q4_K_M" and q4["role"] == "candidate"
    # The same numbers as the compare document (which paired the same items).
    [cmp_q4] = [c for c in compare["comparisons"] if c["new_label"] == f"{MODEL}-Q4_K_M" and c["task"] == "mmlu"]
    assert cmp_q4["new"]["mean"] == pytest.approx(q4["value"])

    by_quant = {v["quant"]: v for v in doc["variants"]}
    assert by_quant["Q4_K_M"]["kld_vs_f16"] == pytest.approx(0.1186)
    assert by_quant["Q8_0"]["top1_vs_f16"] == pytest.approx(0.9912)
    assert doc["environment"]["llama.cpp toolchain"] == "llama-cpp-python 0.3.36"
    assert doc["environment"]["lm-eval (evaluations)"] == "0.4.13"

    md = paths["md"].read_text()
    for c in compare["comparisons"]:
        assert f"| {c['new_label']} | {c['task']} | {c['metric']} | {c['filter']} | {c['verdict']} |" in md
    html = paths["html"].read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html
    assert html.count("<svg") == 3


def test_failed_run_report_and_index(tmp_path):
    store, run_dir = populate(tmp_path, failed_step="evaluate")
    paths = report_from_store(store, RUN_ID)
    md = paths["md"].read_text()
    assert "**Run failed at stage evaluate.**" in md
    assert "tensor 'blk.0.attn\\_q' has wrong shape" in md or "tensor 'blk.0.attn_q' has wrong shape" in md

    index = write_index(store, tmp_path / "site" / "index.html")
    html = index.read_text()
    links = re.findall(r'href="([^"]+)"', html)
    assert links and all((index.parent / link).resolve() == paths["html"].resolve() for link in links)
    assert html.count(f">{RUN_ID}<") == 3  # one leaderboard row per variant


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_cli_report_and_runs(tmp_path):
    populate(tmp_path)
    out = _cli("report", RUN_ID, "--home", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "runs" / RUN_ID / "report.html").is_file()
    assert "report.md" in out.stdout

    runs = _cli("runs", "--home", str(tmp_path), "--html")
    assert runs.returncode == 0, runs.stderr
    assert RUN_ID in runs.stdout and "Q4_K_M" in runs.stdout
    assert (tmp_path / "runs" / "index.html").is_file()

    missing = _cli("report", "nope", "--home", str(tmp_path))
    assert missing.returncode == 1
    assert "no run 'nope'" in missing.stderr and "posttrain runs" in missing.stderr


@pytest.mark.slow
def test_report_with_real_gguf_variants(tiny_spm, tmp_path):
    """Variants made by llama.cpp's converter and quantizer: their real sha256s, sizes and the KL
    divergence the convert step measured show up in the report."""
    from posttrain.convert import convert_checkpoint

    converted = convert_checkpoint(tiny_spm, tmp_path / "gguf", ["f16", "q8_0", "q4_k_m"], model_name=MODEL)
    store, run_dir = populate(tmp_path / "home", converted=converted)
    paths = report_from_store(store, RUN_ID)
    doc = json.loads(paths["json"].read_text())
    by_quant = {v["quant"]: v for v in doc["variants"]}
    assert set(by_quant) == {"F16", "Q8_0", "Q4_K_M"}
    for v in converted.variants:
        got = by_quant[v.quant]
        assert got["sha256"] == hashlib.sha256(v.path.read_bytes()).hexdigest()
        assert got["size_bytes"] == v.path.stat().st_size
        assert got["kld_vs_f16"] == pytest.approx(v.kld_vs_f16)
    assert by_quant["Q4_K_M"]["kld_vs_f16"] > by_quant["Q8_0"]["kld_vs_f16"] >= 0
    html = paths["html"].read_text()
    for v in converted.variants:
        assert v.sha256 in html
    md = paths["md"].read_text()
    assert "| Q4\\_K\\_M |" not in md and "| Q4_K_M |" in md
