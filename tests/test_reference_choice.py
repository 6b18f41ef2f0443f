"""Which 16-bit GGUF a run evaluates as the model itself: BF16 where this CPU runs it faster and the
checkpoint allows it, else F16; the report says which and why.

Which type is faster is the machine profile's answer; `POSTTRAIN_REFERENCE_TYPE` stands in for it here
so that the tests mean the same on every CPU (the profile itself: tests/test_machine_profile.py).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from platforms import posix_only

from posttrain.contracts import ConvertOut, step_outputs
from posttrain.convert import (
    AGREEMENT_FLOOR,
    BuiltVariant,
    convert_checkpoint,
    evaluated_quants,
    plan_reference,
    settle_reference,
)
from posttrain.errors import PosttrainError
from posttrain.store import Store


def _variant(quant: str, top1: float | None = None, positions: int = 400) -> BuiltVariant:
    check = {"vs_f16": {"top1_agreement": top1, "mean_kld": 0.0, "n_positions": positions}} if top1 is not None else {}
    return BuiltVariant(quant, Path(f"m-{quant}.gguf"), "0" * 64, 1, 0.0, "converter", verification=check)


def test_bf16_stands_for_a_float_checkpoint_only_with_enough_agreement_with_f16(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_REFERENCE_TYPE", "BF16")
    plan = plan_reference("auto", "float32")
    assert plan.makes_bf16 and plan.faster == "BF16"
    just_enough = settle_reference(plan, [_variant("F16"), _variant("BF16", AGREEMENT_FLOOR)])
    assert just_enough.quant == "BF16" and "99.50 % of 400 probe-text tokens" in just_enough.reason
    too_few = settle_reference(plan, [_variant("F16"), _variant("BF16", 0.9949)])
    assert too_few.quant == "F16" and "only on 99.49 %" in too_few.reason and "float32" in too_few.reason
    unchecked = settle_reference(plan, [_variant("F16"), _variant("BF16")])
    assert unchecked.quant == "F16" and "check did not run" in unchecked.reason


def test_a_bfloat16_checkpoint_takes_bf16_as_its_exact_weights_where_bf16_is_faster(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_REFERENCE_TYPE", "BF16")
    choice = settle_reference(plan_reference("auto", "bfloat16"), [_variant("F16"), _variant("BF16", 0.9)])
    assert choice.quant == "BF16" and "exact weights" in choice.reason and choice.agreement == 0.9


def test_f16_stays_where_it_is_faster_and_the_configuration_decides_outright(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_REFERENCE_TYPE", "F16")
    plan = plan_reference("auto", "bfloat16")
    assert not plan.makes_bf16
    choice = settle_reference(plan, [_variant("F16")])
    assert choice.quant == "F16" and "POSTTRAIN_REFERENCE_TYPE=F16" in choice.reason
    forced = plan_reference("bf16", "float32")
    assert forced.makes_bf16 and settle_reference(forced, [_variant("F16"), _variant("BF16", 0.5)]).quant == "BF16"
    assert settle_reference(plan_reference("F16", "bfloat16"), [_variant("F16")]).reason == \
        "reference = f16 in posttrain.toml"
    with pytest.raises(PosttrainError, match="unknown reference 'fp8'"):
        plan_reference("fp8")


def test_without_a_machine_profile_the_reference_is_f16(monkeypatch):
    monkeypatch.delenv("POSTTRAIN_REFERENCE_TYPE", raising=False)
    monkeypatch.setenv("POSTTRAIN_MACHINE_PROFILE", "0")
    plan = plan_reference("auto", "bfloat16")
    assert plan.faster == "F16" and not plan.makes_bf16 and "no machine profile" in plan.why_faster


def test_f16_in_the_list_stands_for_the_reference_and_a_type_named_itself_is_kept():
    assert evaluated_quants(["F16", "Q8_0", "BF16"], "F16") == ["F16", "Q8_0", "BF16"]
    assert evaluated_quants(["F16", "Q8_0"], "BF16") == ["BF16", "Q8_0"]
    assert evaluated_quants(["F16", "BF16", "Q4_K_M"], "BF16") == ["BF16", "Q4_K_M"]


@pytest.mark.slow
def test_the_agreement_is_measured_on_the_real_converted_files(tiny_spm, tmp_path, monkeypatch):
    """tiny_spm is float32: BF16 is tried beside F16, and the choice follows what convert measured."""
    monkeypatch.setenv("POSTTRAIN_REFERENCE_TYPE", "BF16")
    from posttrain.checkpoint import checkpoint_dtype

    plan = plan_reference("auto", checkpoint_dtype(tiny_spm))
    assert plan.checkpoint_dtype == "float32" and plan.makes_bf16
    result = convert_checkpoint(tiny_spm, tmp_path / "gguf", ["f16", "bf16"])
    choice = settle_reference(plan, result.variants)
    measured = result.variant("BF16").verification["vs_f16"]["top1_agreement"]
    assert choice.agreement == measured
    assert choice.quant == ("BF16" if measured >= AGREEMENT_FLOOR else "F16")
    assert f"{measured * 100:.2f} %" in choice.reason


def _hellaswag(root: Path, n: int = 8) -> Path:
    data = root / "data" / "hellaswag"
    data.mkdir(parents=True)
    rng = random.Random(0)
    rows = [{"ind": i, "activity_label": "Pets", "ctx_a": "The cat walks home.", "ctx_b": "the cat", "ctx": "",
             "label": str(rng.randrange(4)), "split": "val", "split_type": "indomain", "source_id": f"x{i}",
             "endings": [f"{verb} the door." for verb in ("opens", "sees", "finds", "paints")]} for i in range(n)]
    (data / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "data"


@pytest.mark.slow
def test_a_run_of_a_bfloat16_fine_tune_evaluates_bf16_and_the_report_says_why(tmp_path):
    from posttrain.tiny import make_tiny

    ckpt = make_tiny(tmp_path / "runs" / "exp1" / "final_model", dtype="bfloat16")
    base = make_tiny(tmp_path / "base", dtype="bfloat16", seed=3)
    config = tmp_path / "posttrain.toml"
    config.write_text(f'quants = ["f16", "q8_0"]\ntasks = ["hellaswag"]\ndata_dir = "{_hellaswag(tmp_path)}"\n'
                      f'limit = 8\nbaseline = "{base}"\n[ollama]\nurl = "http://127.0.0.1:9"\n')
    home = tmp_path / "home"
    env = {**os.environ, "POSTTRAIN_REFERENCE_TYPE": "BF16"}  # as the profile says on an AVX512_BF16 CPU
    done = subprocess.run([sys.executable, "-m", "posttrain", "run", str(ckpt), "--config", str(config),
                           "--home", str(home)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr

    store = Store(home / "posttrain.db")
    (run,) = store.runs.newest_first()
    labels = {label for _, label in store.run_evals.labels(run["id"])}
    assert labels == {"exp1-BF16", "exp1-Q8_0", "baseline"}  # F16 was made, not evaluated
    gguf = home / "gguf"
    assert (gguf / "exp1" / "exp1-F16.gguf").is_file()  # the quantizer's source and the check's reference
    assert (gguf / "base" / "base-BF16.gguf").is_file()  # the bfloat16 baseline in its own exact type too
    convert = next(step_outputs("convert", r["outputs_json"]) for r in store.steps.of_run(run["id"])
                   if r["name"] == "convert")
    assert isinstance(convert, ConvertOut) and convert.reference.quant == "BF16"

    run_dir = home / "runs" / run["id"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["reference"]["quant"] == "BF16" and report["reference"]["checkpoint_dtype"] == "bfloat16"
    assert "Reference: **BF16**" in (run_dir / "report.md").read_text()
    assert "the checkpoint is bfloat16, so BF16 holds its exact weights" in (run_dir / "report.html").read_text()


@pytest.mark.slow
def test_a_bf16_that_cannot_be_made_leaves_f16_as_the_reference_and_the_run_goes_on(tmp_path):
    """BF16 is only tried: here a file of the user's already has its name, which convert never replaces."""
    from posttrain.tiny import make_tiny

    ckpt = make_tiny(tmp_path / "runs" / "exp1" / "final_model")
    home = tmp_path / "home"
    theirs = home / "gguf" / "exp1" / "exp1-BF16.gguf"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"the user's own file")
    config = tmp_path / "posttrain.toml"
    config.write_text(f'quants = ["f16"]\ntasks = ["hellaswag"]\ndata_dir = "{_hellaswag(tmp_path)}"\nlimit = 4\n'
                      f'[ollama]\nurl = "http://127.0.0.1:9"\n')
    env = {**os.environ, "POSTTRAIN_REFERENCE_TYPE": "BF16"}
    done = subprocess.run([sys.executable, "-m", "posttrain", "run", str(ckpt), "--config", str(config),
                           "--home", str(home)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert theirs.read_bytes() == b"the user's own file"
    store = Store(home / "posttrain.db")
    (run,) = store.runs.newest_first()
    assert {label for _, label in store.run_evals.labels(run["id"])} == {"exp1-F16"}
    report = json.loads((home / "runs" / run["id"] / "report.json").read_text())
    assert report["reference"]["quant"] == "F16"
    assert report["reference"]["reason"].startswith("BF16 could not be made (")
    assert "exp1-BF16.gguf" in report["reference"]["reason"]


@posix_only
@pytest.mark.slow
def test_the_first_run_on_a_cpu_measures_it_in_the_convert_step_and_then_says_what_it_does(tmp_path):
    """No profile yet (a cache of its own): `run` measures it before converting, the convert step's
    line in a terminal says so and then moves on to the conversion (it used to stay on "measuring"
    while the converter ran), and the choice names the profile as its evidence."""
    from test_cli_quiet import TerminalRun

    from posttrain.tiny import make_tiny

    ckpt = make_tiny(tmp_path / "runs" / "exp1" / "final_model", dtype="bfloat16")
    config = tmp_path / "posttrain.toml"
    config.write_text(f'quants = ["f16"]\ntasks = ["hellaswag"]\ndata_dir = "{_hellaswag(tmp_path)}"\nlimit = 4\n'
                      f'[ollama]\nurl = "http://127.0.0.1:9"\n')
    cache, home, log = tmp_path / "cache", tmp_path / "home", tmp_path / "terminal.log"
    env = {k: v for k, v in os.environ.items() if k != "POSTTRAIN_REFERENCE_TYPE"} | {"POSTTRAIN_CACHE": str(cache)}
    terminal = TerminalRun([sys.executable, "-m", "posttrain", "run", str(ckpt), "--config", str(config),
                            "--home", str(home)], tmp_path, env, log)
    code = terminal.wait(900)
    screen = re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]", "", log.read_text(errors="replace"))
    assert code == 0, screen[-3000:]
    assert list((cache / "machine-profile").glob("*.json"))  # measured, once, in this cache
    assert "convert · measuring llama.cpp on this CPU" in screen
    assert screen.rindex("convert · converting to GGUF") > screen.rindex("convert · measuring llama.cpp")
    store = Store(home / "posttrain.db")
    (run,) = store.runs.newest_first()
    reason = json.loads((home / "runs" / run["id"] / "report.json").read_text())["reference"]["reason"]
    assert "the machine profile" in reason or "could not time BF16" in reason, reason


@pytest.mark.slow
def test_a_lora_on_a_bfloat16_base_is_evaluated_on_bf16_by_both_routes(tmp_path):
    """PEFT merges into the base's dtype (bfloat16), and the adapter route applies the GGUF LoRA to the
    base's BF16: both routes and the baseline (the base) on their exact weights where BF16 is faster."""
    from lora_helpers import train_lora

    from posttrain.tiny import make_tiny

    base = make_tiny(tmp_path / "base", dtype="bfloat16")
    adapter = train_lora(base, tmp_path / "runs" / "exp1" / "final_model")
    config = tmp_path / "posttrain.toml"
    config.write_text(f'quants = ["f16"]\ntasks = ["hellaswag"]\ndata_dir = "{_hellaswag(tmp_path)}"\nlimit = 8\n'
                      f'[ollama]\nurl = "http://127.0.0.1:9"\n')
    home = tmp_path / "home"
    env = {**os.environ, "POSTTRAIN_REFERENCE_TYPE": "BF16"}
    done = subprocess.run([sys.executable, "-m", "posttrain", "run", str(adapter), "--config", str(config),
                           "--home", str(home)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = Store(home / "posttrain.db")
    (run,) = store.runs.newest_first()
    assert {label for _, label in store.run_evals.labels(run["id"])} == {"exp1-BF16", "exp1-BF16+LoRA", "baseline"}
    assert (home / "gguf" / "base" / "base-BF16.gguf").is_file()
    report = json.loads((home / "runs" / run["id"] / "report.json").read_text())
    assert report["reference"]["quant"] == "BF16" and report["reference"]["checkpoint_dtype"] == "bfloat16"
    assert report["adapter"]["routes"] == ["merge", "adapter"] and report["adapter"]["ship"] is not None
    assert {g["route"] for g in report["adapter"]["gaps"]} == {"exp1-BF16+LoRA"}
