"""The result cache: the same key reuses the stored evaluation without loading a model; any key part recomputes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_evaluate_offline import write_gsm8k, write_hellaswag

from posttrain.evaluate import evaluate
from posttrain.store import Store


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks")
    write_gsm8k(root, n_test=3, n_train=6)
    write_hellaswag(root, n=4)
    return root


def test_second_run_loads_no_model_and_any_key_part_recomputes(tiny_gguf, data_dir, tmp_path, caplog):
    store = Store(tmp_path / "posttrain.db")
    out = tmp_path / "out"

    def run(model=tiny_gguf["F16"], tasks=("hellaswag",), **kw):
        kw.setdefault("limit", 3)
        return evaluate(model, list(tasks), data_dir=data_dir, store=store, out_dir=out, **kw)

    caplog.set_level(logging.INFO, logger="posttrain.evaluate")

    def loads() -> int:  # every model load goes through make_lm, which logs it
        return sum(r.getMessage().startswith("loading ") for r in caplog.records)

    (first,) = run()
    loaded = loads()
    samples_files = sorted(out.rglob("samples_*.jsonl"))

    (again,) = run()
    assert again.cached and again.eval_id == first.eval_id and again.metrics == first.metrics
    assert loads() == loaded  # no model was even loaded
    assert sorted(out.rglob("samples_*.jsonl")) == samples_files  # and lm-eval did not run

    changed = {
        "model": run(model=tiny_gguf["Q8_0"]),
        "seed (another item selection)": run(seed=1),
        "subset size": run(limit=2),
        "n-shot": run(num_fewshot=1),
    }
    data2 = tmp_path / "data2"
    write_hellaswag(data2, n=4)
    val = data2 / "hellaswag" / "hellaswag_val.jsonl"
    val.write_text(val.read_text().replace("look up.", "look around."))  # same items, one ending edited
    changed["task content"] = evaluate(tiny_gguf["F16"], ["hellaswag"], data_dir=data2, limit=3, store=store,
                                       out_dir=out)
    ids = {first.eval_id}
    for what, (result,) in changed.items():
        assert not result.cached, what
        assert result.eval_id not in ids, what
        ids.add(result.eval_id)
    assert loads() > loaded

    # generation arguments are part of the key too (GSM8K is a generation task)
    (g1,) = run(tasks=("gsm8k",), gen_kwargs={"max_gen_toks": 4})
    (g2,) = run(tasks=("gsm8k",), gen_kwargs={"max_gen_toks": 4})
    (g3,) = run(tasks=("gsm8k",), gen_kwargs={"max_gen_toks": 5})
    (g4,) = run(tasks=("gsm8k",), gen_kwargs={"max_gen_toks": 4}, think_patterns=[r"(?s)<reasoning>.*?</reasoning>"])
    assert g2.cached and not g3.cached and not g4.cached
    assert len({g1.eval_id, g3.eval_id, g4.eval_id}) == 3


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "posttrain", "eval", *args, "--home", str(home)],
                          capture_output=True, text=True, timeout=600, env=env)


def test_cli_prints_the_table_and_a_gguf_that_does_not_load_is_one_line_and_nonzero(tiny_gguf, data_dir, tmp_path):
    ok = _cli(str(tiny_gguf["F16"]), "--tasks", "hellaswag", "--data-dir", str(data_dir), "--limit", "2",
              home=tmp_path)
    assert ok.returncode == 0, ok.stderr
    for word in ("hellaswag", "acc_norm", "95% CI", "tokens/s"):
        assert word in ok.stdout
    assert "cached" not in ok.stdout
    # a new process finds the stored result (the key holds nothing that changes between processes)
    again = _cli(str(tiny_gguf["F16"]), "--tasks", "hellaswag", "--data-dir", str(data_dir), "--limit", "2",
                 home=tmp_path)
    assert again.returncode == 0 and "cached" in again.stdout

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)  # the magic, then nonsense
    bad = _cli(str(broken), "--tasks", "hellaswag", "--data-dir", str(data_dir), home=tmp_path)
    assert bad.returncode != 0
    error_lines = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "broken.gguf" in error_lines[0]
    assert "Traceback" not in bad.stderr

    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_text("hello")
    bad = _cli(str(not_gguf), "--tasks", "hellaswag", "--data-dir", str(data_dir), home=tmp_path)
    assert bad.returncode != 0 and "not a GGUF file" in bad.stderr
