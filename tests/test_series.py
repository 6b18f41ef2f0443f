"""Checkpoint series (issue 31 item 3): a training run that leaves checkpoint-1/, checkpoint-2/ and
final_model/ is watched with `--series`; each checkpoint is converted and evaluated on the same
HellaSwag items by the real pipeline (llama.cpp, lm-eval), and the series report shows each one's
score with its CI, each paired with the previous and the final one, and names the best checkpoint."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.pipeline._watcher import compile_pattern, series_pattern
from posttrain.series import SeriesLayout, checkpoint_step, read_series
from posttrain.store import Store

N_ITEMS = 20


def test_series_pattern_takes_the_checkpoints_beside_the_final_model():
    pattern = series_pattern("**/final_model")
    assert pattern == "**/{final_model,checkpoint-*}"
    rx = compile_pattern(pattern)
    assert rx.match("exp1/final_model") and rx.match("exp1/checkpoint-500") and rx.match("checkpoint-1")
    assert not rx.match("exp1/checkpoint-500/sub") and not rx.match("exp1/logs")
    assert not compile_pattern("**/final_model").match("exp1/checkpoint-500")  # without series: as before
    assert series_pattern(pattern) == pattern


def test_the_step_comes_from_the_folder_name_else_trainer_state(tmp_path):
    assert checkpoint_step(tmp_path / "checkpoint-1500") == 1500
    final = tmp_path / "final_model"
    final.mkdir()
    assert checkpoint_step(final) is None
    (final / "trainer_state.json").write_text(json.dumps({"global_step": 2000}))
    assert checkpoint_step(final) == 2000


@pytest.fixture(scope="module")
def series_run(tmp_path_factory) -> dict:
    from posttrain.tiny import make_tiny

    root = tmp_path_factory.mktemp("series")
    data = root / "data" / "hellaswag"
    data.mkdir(parents=True)
    # Endings of three words each, drawn at random: the models' choices differ, not just follow length.
    rng = random.Random(7)
    words = "door ball book apple river stone cloud table garden window bread music".split()
    rows = [{"ind": i, "activity_label": "Pets", "ctx_a": f"The cat {i} walks home.", "ctx_b": "the cat", "ctx": "",
             "label": str(rng.randrange(4)), "split": "val", "split_type": "indomain", "source_id": f"x{i}",
             "endings": [" ".join(rng.choice(words) for _ in range(3)) + "." for _ in range(4)]}
            for i in range(N_ITEMS)]
    (data / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = root / "posttrain.toml"
    config.write_text(f'quants = ["f16"]\ntasks = ["hellaswag"]\ndata_dir = "{(root / "data").as_posix()}"\n'
                      f'limit = {N_ITEMS}\nretry_backoff_s = 0.1\n[ollama]\nurl = "http://127.0.0.1:9"\n'
                      '[watch]\nsettle_s = 0.2\n')
    training = root / "watched" / "exp1"
    # Three "checkpoints" of one training run: tiny models with different seeds score differently.
    for seed, name in enumerate(("checkpoint-1", "checkpoint-2", "final_model")):
        make_tiny(training / name, seed=seed)
    home = root / "home"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    watch = subprocess.run([sys.executable, "-m", "posttrain", "watch", str(root / "watched"), "--once", "--series",
                            "--config", str(config), "--home", str(home)],
                           capture_output=True, text=True, timeout=900, env=env)
    return {"root": root, "home": home, "training": training, "watch": watch, "env": env, "config": config}


@pytest.mark.slow
def test_watch_series_evaluates_every_checkpoint_and_names_the_best(series_run):
    watch, home, training = series_run["watch"], series_run["home"], series_run["training"]
    assert watch.returncode == 0, watch.stdout + watch.stderr
    done = Store(home / "posttrain.db").query("SELECT path, status FROM processed_checkpoints")
    assert sorted((Path(r["path"]).name, r["status"]) for r in done) == [
        ("checkpoint-1", "succeeded"), ("checkpoint-2", "succeeded"), ("final_model", "succeeded")]

    layout = SeriesLayout.for_folder(home, training)
    doc = read_series(layout.json)
    assert doc is not None and doc.folder == str(training.resolve())
    # Scores per checkpoint, in training order, the final model last, each with its CI on the same n items.
    assert [(p.label, p.step) for p in doc.points] == [("checkpoint-1", 1), ("checkpoint-2", 2), ("final_model", None)]
    acc = {}
    for p in doc.points:
        (s,) = [s for s in p.scores if (s.task, s.metric) == ("hellaswag", "acc")]
        assert s.n == N_ITEMS and s.ci[0] <= s.mean <= s.ci[1]
        acc[p.label] = s.mean
    # Each checkpoint against the previous one and against the final one, with paired p-values.
    pairs = {(q.kind, q.label, q.versus) for q in doc.pairings if q.metric == "acc"}
    assert pairs == {("final", "checkpoint-1", "final_model"), ("previous", "checkpoint-2", "checkpoint-1"),
                     ("final", "checkpoint-2", "final_model"), ("previous", "final_model", "checkpoint-2")}
    for q in doc.pairings:
        assert q.n == N_ITEMS and q.test == "mcnemar_exact"
        assert 0 <= q.p_value <= q.p_adjusted <= 1
        assert q.diff == pytest.approx(acc[q.label] - acc[q.versus]) if q.metric == "acc" else True
    # The two sides of checkpoint-2 ↔ final_model are one test: the same p-value, the difference negated.
    (a,) = [q for q in doc.pairings if (q.label, q.versus, q.metric) == ("checkpoint-2", "final_model", "acc")]
    (b,) = [q for q in doc.pairings if (q.label, q.versus, q.metric) == ("final_model", "checkpoint-2", "acc")]
    assert a.p_adjusted == b.p_adjusted and a.diff == pytest.approx(-b.diff)

    best = max(acc, key=lambda k: (acc[k], list(acc).index(k)))
    assert doc.best.label == best
    assert re.match(rf"the best checkpoint is {best} \((step \d+|the last step); against the (final model|runner-up [\w-]+): "
                    r"hellaswag [\d.]+% vs [\d.]+%, paired p = [\d.e-]+", doc.best.sentence), doc.best.sentence
    # The watcher prints where the series stands after the last checkpoint.
    assert doc.best.sentence in watch.stdout and f"series: {layout.html}" in watch.stdout

    html = layout.html.read_text(encoding="utf-8")
    md = layout.md.read_text(encoding="utf-8")
    assert "<svg" in html and "<script" not in html and "http://" not in html.split("<svg", 1)[0]
    assert doc.best.sentence.replace("<", "&lt;") in md or doc.best.sentence in md
    assert "| checkpoint-2 | checkpoint-1 | previous | hellaswag | acc |" in md


@pytest.mark.slow
def test_series_command_rewrites_the_report_from_the_store(series_run):
    home, training = series_run["home"], series_run["training"]
    assert series_run["watch"].returncode == 0
    layout = SeriesLayout.for_folder(home, training)
    before = read_series(layout.json)
    layout.json.unlink()
    proc = subprocess.run([sys.executable, "-m", "posttrain", "series", str(training), "--home", str(home)],
                          capture_output=True, text=True, timeout=300, env=series_run["env"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    again = read_series(layout.json)
    assert again.best == before.best and again.pairings == before.pairings
    assert before.best.sentence in proc.stdout and str(layout.html) in proc.stdout


def test_the_series_page_escapes_what_folder_and_task_names_carry(tmp_path):
    """Folder and task names are the user's (or a downloaded task's): the page shows them, never runs them."""
    from posttrain.contracts import ItemResult
    from posttrain.series import build_series, write_series
    from posttrain.series._gather import Gathered, Member

    task = "<img src=x onerror=alert(1)>"

    def items(right: set[int]) -> list[ItemResult]:
        return [ItemResult(task=task, group=None, doc_id=i, doc_hash=f"h{i}", filter="none", metric="acc",
                           value=float(i in right), cluster=None, question=None, target=None, response=None)
                for i in range(30)]

    folder = tmp_path / "<script>alert(1)</script>"
    members = [Member("checkpoint-10", folder / "checkpoint-10", 10, "r1", "x-F16", items(set(range(5)))),
               Member("final_model", folder / "final_model", None, "r2", "x-F16", items(set(range(25))))]
    doc = build_series(Gathered(members, [], "f16"), str(folder))
    assert doc.best.label == "final_model" and doc.best.sentence.startswith("the best checkpoint is final_model")
    (pairing,) = doc.pairings[:1]
    assert pairing.p_adjusted < 0.05 and pairing.verdict == "worse"  # 5 of 30 against 25 of 30, same items
    layout = write_series(SeriesLayout(tmp_path / "out"), doc)
    html = layout.html.read_text(encoding="utf-8")
    assert "<script>" not in html and "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<svg" in html
