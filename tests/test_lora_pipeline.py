"""`posttrain run ADAPTER_DIR` end to end, and Ollama's ADAPTER against the stand-in server.

The adapter is the real one trained in conftest (`tiny_lora`); its adapter_config.json names the
tiny base, which becomes the baseline. Both routes are built, registered and evaluated.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ollama_standin import OllamaStandin

from posttrain.serve import Variant, register_variants
from posttrain.store import Store


def hellaswag_rows(n: int) -> str:
    rng = random.Random(1)
    objects = ["the door", "a red ball", "seven apples", "the long road", "a new book"]
    rows = [{"ind": i, "activity_label": "Pets", "ctx_a": "The cat walks home.", "ctx_b": "the cat", "ctx": "",
             "label": str(rng.randrange(4)), "split": "val", "split_type": "indomain", "source_id": f"x{i}",
             "endings": [f"sees {o}." for o in rng.sample(objects, 4)]} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_ollama_gets_the_base_blob_and_the_adapter_blob(tiny_lora_routes, tmp_path):
    r = tiny_lora_routes
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    base, lora = shutil.copy(r["base_f16"], gguf_dir), shutil.copy(r["lora_f16"], gguf_dir)
    from posttrain._files import sha256_file

    variant = Variant(path=Path(base), quant="F16-LoRA", sha256=sha256_file(Path(base)), model_name="exp",
                      adapter=Path(lora), adapter_sha256=sha256_file(Path(lora)))
    with OllamaStandin(tmp_path / "ollama") as standin:
        (reg,) = register_variants([variant], url=standin.url, store=Store(tmp_path / "db.sqlite"))
        assert reg.status == "created" and reg.name == "exp_f16-lora:latest"
        model = standin.models[reg.name]
        assert model.adapters == {Path(lora).name: f"sha256:{variant.adapter_sha256}"}
        assert model.blob == f"sha256:{variant.sha256}"
        # The Modelfile beside the adapter says the same, for `ollama create -f` by hand.
        text = (Path(lora).parent / f"{Path(lora).name}.Modelfile").read_text()
        assert f"FROM ./{Path(base).name}\n" in text and f"ADAPTER ./{Path(lora).name}\n" in text
        # Registering again changes nothing; the plain base keeps its own Modelfile name.
        (again,) = register_variants([variant], url=standin.url, store=Store(tmp_path / "db.sqlite"))
        assert again.status == "unchanged"
        assert not (Path(base).parent / f"{Path(base).name}.Modelfile").exists()


@pytest.mark.slow
def test_run_on_a_qlora_adapter_builds_both_routes_and_compares_them_with_the_base(tiny_lora, tiny_spm, tmp_path):
    data = tmp_path / "data" / "hellaswag"
    data.mkdir(parents=True)
    (data / "hellaswag_val.jsonl").write_text(hellaswag_rows(12))
    adapter = shutil.copytree(tiny_lora, tmp_path / "exp1" / "final_model")
    # As Unsloth writes it: the base is a 4-bit Hub repo (QLoRA); its full-precision copy is given by --base.
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "unsloth/tiny-bnb-4bit"}))
    home = tmp_path / "home"
    config = tmp_path / "posttrain.toml"
    with OllamaStandin(tmp_path / "ollama") as standin:
        config.write_text(f'quants = ["f16"]\ntasks = ["hellaswag"]\ndata_dir = "{tmp_path / "data"}"\nlimit = 12\n'
                          f'[ollama]\nurl = "{standin.url}"\n')
        proc = subprocess.run([sys.executable, "-m", "posttrain", "run", str(adapter), "--base", str(tiny_spm),
                               "--config", str(config), "--home", str(home)], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert {"exp1_f16:latest", "exp1_f16-lora:latest"} <= set(standin.models)
        assert standin.models["exp1_f16-lora:latest"].adapters
    (run_dir,) = (home / "runs").iterdir()
    compare = json.loads((run_dir / "compare.json").read_text())
    labels = {c["new_label"] for c in compare["comparisons"]}
    assert labels == {"exp1-F16", "exp1-F16+LoRA", "exp1-Q4_K_M+LoRA"}
    assert {c["baseline_label"] for c in compare["comparisons"]} == {"baseline"}
    # The merged checkpoint is the run's own; the base was converted once and named as the baseline.
    assert (run_dir / "merged" / ".posttrain-merge.json").is_file()
    store = Store(home / "posttrain.db")
    (run,) = store.query("SELECT baseline FROM runs")
    assert run["baseline"] == str(tiny_spm.resolve())
    report = (run_dir / "report.md").read_text()
    assert "### LoRA adapter" in report and "routes built: merge, adapter" in report
    assert "| exp1-F16 | exp1-F16+LoRA | hellaswag |" in report  # the gap between the routes, per task
    assert "| exp1-F16 | exp1-Q4_K_M+LoRA | hellaswag |" in report and "QLoRA" in report
    assert "**Ship exp1-F16**" in report or "**Ship exp1-F16+LoRA**" in report
    doc = json.loads((run_dir / "report.json").read_text())
    assert doc["adapter"]["qlora"] is True and doc["adapter"]["base"] == run["baseline"]


def _comparison(label: str, verdict: str, diff: float) -> dict:
    return {"new_label": label, "task": "hellaswag", "metric": "acc", "filter": "none", "verdict": verdict,
            "diff": {"mean": diff}}


def test_the_report_advises_the_smallest_merged_variant_unless_it_loses_where_the_adapter_does_not():
    from posttrain.report._adapter import adapter_section

    from posttrain.contracts import AdapterFacts, AdapterRoute, AdapterRoutes

    facts = AdapterFacts(base="/m/base", peft_type="LORA", rank=8, lora_alpha=16.0, qlora=True)
    routes = AdapterRoutes(merged=Path("/r/merged"), adapter=AdapterRoute(
        base_gguf=Path("/g/base-F16.gguf"), base_sha256="b" * 64, lora=Path("/g/x-lora-F16.gguf"),
        lora_sha256="a" * 64, size_bytes=1))
    sizes = {"F16": 200, "Q4_K_M": 60}
    fine = [_comparison("x-F16", "better", 0.05), _comparison("x-Q4_K_M", "better", 0.04),
            _comparison("x-F16+LoRA", "better", 0.06)]
    view = adapter_section(facts, routes, fine, sizes)
    assert view["ship"] == "x-Q4_K_M" and view["routes"] == ["merge", "adapter"]
    assert any("QLoRA" in n for n in view["notes"])
    assert {(g["label"], round(g["gap"], 6)) for g in view["gaps"]} == {("x-F16", -0.01), ("x-Q4_K_M", -0.02)}
    # A QLoRA's 4-bit base + adapter is a route of its own: gaps against it, never "the merged variant".
    qlora = [*fine, _comparison("x-Q4_K_M+LoRA", "better", 0.045)]
    view = adapter_section(facts, routes, qlora, sizes)
    assert view["ship"] == "x-Q4_K_M"
    assert {(g["label"], g["route"]) for g in view["gaps"]} == {
        (m, r) for m in ("x-F16", "x-Q4_K_M") for r in ("x-F16+LoRA", "x-Q4_K_M+LoRA")}
    losing = [_comparison("x-F16", "worse", -0.05), _comparison("x-Q4_K_M", "worse", -0.07),
              _comparison("x-F16+LoRA", "no significant difference", 0.0)]
    assert adapter_section(facts, routes, losing, sizes)["ship"] == "x-F16+LoRA"
    assert adapter_section(None, routes, fine, sizes) is None  # full weights: no section


def test_the_watcher_picks_up_a_finished_adapter_and_not_a_half_written_one(tiny_lora, tmp_path):
    from posttrain.checkpoint import checkpoint_sha256, inspect_checkpoint
    from posttrain.pipeline._watcher import Watcher

    watched = tmp_path / "runs"
    done = shutil.copytree(tiny_lora, watched / "exp" / "final_model")
    cut = shutil.copytree(tiny_lora, watched / "cut" / "final_model")
    data = (cut / "adapter_model.safetensors").read_bytes()
    (cut / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    calls = []

    def handler(path: Path, sha: str) -> dict:
        calls.append((path, sha))
        return {"status": "succeeded", "run_id": f"run-{sha[:8]}"}

    results = Watcher([watched], handler, store=Store(tmp_path / "db.sqlite"), settle_s=0.2).run_once()
    assert [Path(r["path"]) for r in results] == [done]
    assert calls == [(done, checkpoint_sha256(inspect_checkpoint(done, settle_seconds=0)))]


def test_the_demo_trains_a_lora_whose_base_is_its_baseline(tmp_path):
    from posttrain.checkpoint import inspect_checkpoint
    from posttrain.demo import train_demo_model

    ck = train_demo_model(tmp_path, steps=4, threads=1, quiet=True, lora=True)
    assert ck.early == tmp_path / "init_model" and ck.final == tmp_path / "final_model"
    verdict = inspect_checkpoint(ck.final, settle_seconds=0)
    assert verdict.complete and verdict.kind == "adapter", verdict.reason
    assert verdict.base == ck.early and verdict.routes == ("merge", "adapter")
    # all-linear: every projection of every layer carries a LoRA pair.
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= {
        m.rsplit(".", 1)[-1] for m in verdict.target_modules}
    assert not (tmp_path / "checkpoint-early").exists()
