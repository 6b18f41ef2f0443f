"""`posttrain ship` end to end on a tiny checkpoint: real converter, lm-eval, llama.cpp, SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from posttrain.tiny import corpus
from test_evaluate_offline import write_hellaswag


def _ship(*args, home):
    env = {**os.environ, "POSTTRAIN_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "posttrain", "ship", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def shipped(tiny_spm, tmp_path_factory):
    root = tmp_path_factory.mktemp("ship")
    data = root / "data"
    write_hellaswag(data, n=8)
    # "[bold]" in a file name: printed as typed, never read as rich markup.
    text = root / "held[bold]out.txt"
    text.write_text("\n".join(corpus(1500, seed=11)))
    out = root / "out"
    common = ["--tasks", "hellaswag", "--data-dir", data, "-q", "f16,q8_0,q4_k_m", "--n-ctx", "64",
              "--max-tokens", "512", "--reps", "1", "--out", out]
    first = _ship(tiny_spm, "--text", text, *common, home=root / "home")
    # Again without --text: the same variants and evaluations are reused, the text comes from the items.
    second = _ship(tiny_spm, *common[:-1], root / "out2", home=root / "home")
    return root, first, second


def test_ship_writes_the_ladder_and_an_indicated_pick_with_items_needed(shipped):
    root, proc, _ = shipped
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((root / "out" / "ship.json").read_text())
    assert doc["schema"] == "posttrain.ship/1"
    quants = [v["quant"] for v in doc["variants"]]
    assert quants == ["F16", "Q8_0", "Q4_K_M"]
    made_by = {v["quant"]: v["made_by"] for v in doc["variants"]}
    assert made_by == {"F16": "converter", "Q8_0": "quantizer", "Q4_K_M": "quantizer"}  # one converter start-up
    q = {v["quant"]: v["quality"] for v in doc["variants"]}
    assert q["F16"] is None and q["Q8_0"]["kld_mean"] < q["Q4_K_M"]["kld_mean"]
    assert doc["text"]["kind"] == "user" and doc["text"]["n_chunks"] == 8
    assert all(v["speed"]["tg_tok_s"] > 0 for v in doc["variants"])
    assert all(v["speed"]["conditions"]["cpus"] >= 1 for v in doc["variants"])  # what else ran, recorded
    verdict = doc["verdict"]
    # 8 items cannot decide anything; the held-out text can: Q8_0 (mean KLD ~0.001 on this model) is
    # indicated, Q4_K_M (~0.1) is not.
    assert verdict["pick"] == "Q8_0" and verdict["strength"] == "indicated"
    assert verdict["sentence"].startswith("Ship Q8_0 (") and "indicated, not shown" in verdict["sentence"]
    assert "8 items on hellaswag" in verdict["sentence"]
    assert "indicated, not shown" in " ".join(proc.stdout.split())
    assert "held[bold]out.txt" in (root / "out" / "ship.md").read_text()
    html = (root / "out" / "ship.html").read_text()
    assert "Which quant to ship" in html and "<svg" in html and "Pareto front" in html
    assert "<script" not in html


def test_without_text_the_tasks_documents_are_used_and_the_output_says_so(shipped):
    root, _, proc = shipped
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((root / "out2" / "ship.json").read_text())
    assert doc["text"]["kind"] == "task documents"
    assert "tasks' own documents" in " ".join(proc.stdout.split())
    assert "tasks' own documents" in (root / "out2" / "ship.md").read_text()


def test_a_margin_that_is_not_positive_is_one_line(tiny_spm, tmp_path):
    proc = _ship(tiny_spm, "--margin", "0", "--out", tmp_path / "o", home=tmp_path / "home")
    assert proc.returncode == 1 and "--margin must be a positive number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_pipeline_gets_a_ship_step_before_the_report_only_when_asked(tmp_path):
    from posttrain.pipeline import load_config
    from posttrain.pipeline._stages import Stages

    names = [s.name for s in Stages(load_config(discover=False)).steps()]
    assert "ship" not in names
    steps = {s.name: s for s in Stages(load_config(discover=False, ship=True)).steps()}
    order = list(steps)
    assert order.index("evaluate") < order.index("ship") < order.index("report")
    assert steps["ship"].isolated and steps["ship"].depends_on == ("convert", "evaluate")


def test_the_run_report_opens_with_which_quant_to_ship(shipped, tmp_path):
    from posttrain.report import write_report

    root, _, _ = shipped
    doc = json.loads((root / "out" / "ship.json").read_text())
    paths = write_report(tmp_path, compare={}, run={"id": "r1", "model_name": "tiny"}, variants=[], evals=[],
                         steps=[], environment={}, ship=doc)
    html = paths["html"].read_text()
    assert html.index("Which quant to ship") < html.index('id="verdict"')
    assert "indicated, not shown" in html and "plot-ship" in html
    md = paths["md"].read_text()
    assert "### Which quant to ship" in md and "| Q4\\_K\\_M |" not in md and "| Q4_K_M |" in md
    assert json.loads(paths["json"].read_text())["ship"]["verdict"]["pick"] == "Q8_0"


def test_ship_json_has_one_reader_that_refuses_what_is_not_a_ship_document(tmp_path):
    from posttrain.errors import PosttrainError
    from posttrain.ship import SCHEMA, read_ship, write_ship

    assert read_ship(tmp_path / "ship.json") == {}  # a run without the ladder
    doc = {"schema": SCHEMA, "verdict": {"pick": "Q8_0", "strength": "shown", "sentence": "Ship Q8_0."}}
    path = write_ship(tmp_path, doc)
    assert path == tmp_path / "ship.json" and read_ship(path) == doc
    for other in ('{"schema": "posttrain.compare/1", "verdict": {}}', '{"schema": "posttrain.ship/1"}', "[1, 2]"):
        path.write_text(other)
        with pytest.raises(PosttrainError, match=r"ship\.json is not a ship document \(posttrain\.ship/1\)"):
            read_ship(path)
