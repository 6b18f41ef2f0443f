"""posttrain eval on local task files in the official layouts: real lm-eval, real llama.cpp, real SQLite.

The files are tiny and written here, in the layouts the real data comes in (GSM8K jsonl, MMLU's
original per-subject CSV folders or cais-style JSONL/parquet, HellaSwag's official val JSONL).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from posttrain.errors import PosttrainError
from posttrain.evaluate import evaluate, items_for_eval, select
from posttrain.store import Store

SUBJECTS = ("anatomy", "astronomy")


def write_gsm8k(root: Path, n_test: int = 4, n_train: int = 8) -> None:
    (root / "gsm8k").mkdir(parents=True, exist_ok=True)
    for split, n, offset in (("test", n_test, 1), ("train", n_train, 2)):
        with (root / "gsm8k" / f"{split}.jsonl").open("w") as fh:
            for i in range(n):
                a = i + offset
                fh.write(json.dumps({"question": f"Tom has {i} apples and gets {offset} more. How many?",
                                     "answer": f"{i}+{offset}=<<{i}+{offset}={a}>>{a}\n#### {a}"}) + "\n")


def mmlu_rows(subject: str, split: str, n: int) -> list[list[str]]:
    return [[f"In {subject}, which option is number {i}?", f"one {i}", f"two {i}", f"three {i}", f"four {i}",
             "ABCD"[i % 4]] for i in range(n)]


def write_mmlu_csv(root: Path, n_test: int = 5, n_dev: int = 2) -> None:
    for split, n in (("test", n_test), ("dev", n_dev)):
        folder = root / "mmlu" / "data" / split
        folder.mkdir(parents=True, exist_ok=True)
        for subject in SUBJECTS:
            with (folder / f"{subject}_{split}.csv").open("w", newline="") as fh:
                csv.writer(fh).writerows(mmlu_rows(subject, split, n))


def write_mmlu_cais(root: Path, fmt: str = "jsonl", n_test: int = 5, n_dev: int = 2) -> None:
    (root / "mmlu").mkdir(parents=True, exist_ok=True)
    for split, n in (("test", n_test), ("dev", n_dev)):
        rows = [{"question": r[0], "subject": s, "choices": r[1:5], "answer": "ABCD".index(r[5])}
                for s in SUBJECTS for r in mmlu_rows(s, split, n)]
        if fmt == "jsonl":
            with (root / "mmlu" / f"mmlu_{split}.jsonl").open("w") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), root / "mmlu" / f"{split}.parquet")


def write_hellaswag(root: Path, n: int = 4) -> None:
    (root / "hellaswag").mkdir(parents=True, exist_ok=True)
    labels = ("Cooking", "Sports", "Cooking", "Gardening")
    with (root / "hellaswag" / "hellaswag_val.jsonl").open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({
                "ind": i, "activity_label": labels[i % 4], "ctx_a": f"A person is doing step {i} [title] of it.",
                "ctx_b": "then they", "ctx": f"A person is doing step {i}. then they", "split": "val",
                "split_type": "indomain", "label": str(i % 4),
                "endings": ["stop.", "go on.", "sit down.", "look up."], "source_id": f"x{i}"}) + "\n")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks")
    write_gsm8k(root)
    write_mmlu_csv(root)
    write_hellaswag(root)
    return root


def _samples(out_dir: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for path in sorted(out_dir.glob("lm_eval/*/samples_*.jsonl")):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        found.setdefault(task, []).extend(json.loads(line) for line in path.read_text().splitlines())
    return found


def test_three_official_layouts_end_to_end_items_match_lm_eval_samples(tiny_gguf, data_dir, tmp_path):
    store = Store(tmp_path / "posttrain.db")
    out = tmp_path / "out"
    results = evaluate(tiny_gguf["F16"], ["mmlu", "gsm8k", "hellaswag"], data_dir=data_dir, per_subject=3,
                       store=store, out_dir=out, gen_kwargs={"max_gen_toks": 6})

    by_task = {r.task: r for r in results}
    assert list(by_task) == ["mmlu", "gsm8k", "hellaswag"]
    # --per-subject cuts the task with subjects only; GSM8K and HellaSwag keep all their items (4 each)
    assert by_task["mmlu"].n == 3 * len(SUBJECTS) and by_task["gsm8k"].n == 4 and by_task["hellaswag"].n == 4
    assert {(m.metric, m.filter) for m in by_task["gsm8k"].metrics} == {
        ("exact_match", "strict-match"), ("exact_match", "flexible-extract")}
    assert {m.metric for m in by_task["hellaswag"].metrics} == {"acc", "acc_norm"}
    for r in results:
        assert not r.cached and r.backend == "posttrain-llamacpp"
        for m in r.metrics:
            assert m.ci_low <= m.value <= m.ci_high
    # lm-eval's own files, in its usual layout: one run (one date id) holding every task, as `lm_eval` writes it
    (results_file,) = out.glob("lm_eval/*/results_*.json")
    date = results_file.stem.removeprefix("results_")
    assert {p.name for p in results_file.parent.glob("samples_*.jsonl")} == {
        f"samples_{t}_{date}.jsonl" for t in ("mmlu_anatomy", "mmlu_astronomy", "gsm8k", "hellaswag")}
    assert {"mmlu", "gsm8k", "hellaswag"} <= set(json.loads(results_file.read_text())["results"])

    samples = _samples(out)
    assert set(samples) == {"mmlu_anatomy", "mmlu_astronomy", "gsm8k", "hellaswag"}
    items = {(row["task"], row["doc_hash"], row["filter"], row["metric"]): row
             for row in store.query("SELECT * FROM items")}
    n_checked = 0
    for task, lines in samples.items():
        for s in lines:
            for metric in s["metrics"]:
                row = items[(task, s["doc_hash"], s["filter"], metric)]
                assert row["doc_id"] == s["doc_id"]
                assert row["value"] == pytest.approx(float(s[metric]))
                if task != "gsm8k":
                    assert json.loads(row["choice_ll_json"]) == pytest.approx(
                        [float(r[0]) for r in s["filtered_resps"]])
                else:
                    assert row["response"] == s["filtered_resps"][0]
                n_checked += 1
    assert n_checked == len(items)

    mmlu_items = [i for i in items_for_eval(store, by_task["mmlu"].eval_id)]
    assert {i.group for i in mmlu_items} == {"mmlu"}
    assert {i.cluster for i in mmlu_items} == {"mmlu_anatomy", "mmlu_astronomy"}
    assert {i.target for i in mmlu_items} <= set("ABCD") and {i.response for i in mmlu_items} <= set("ABCD")
    hs = items_for_eval(store, by_task["hellaswag"].eval_id)
    assert {i.cluster for i in hs} <= {"Cooking", "Sports", "Gardening"} and all(i.question for i in hs)


def test_same_seed_pairs_items_across_models_stratified_by_subject(tiny_gguf, data_dir, tmp_path):
    store = Store(tmp_path / "posttrain.db")
    picked = []
    for quant in ("F16", "Q8_0"):
        (r,) = evaluate(tiny_gguf[quant], ["mmlu"], data_dir=data_dir, limit=4, seed=7, store=store,
                        out_dir=tmp_path / quant)
        picked.append({(i.task, i.doc_id, i.doc_hash) for i in items_for_eval(store, r.eval_id)})
    assert picked[0] == picked[1]
    per_subject = {s: sum(1 for t, _, _ in picked[0] if t == f"mmlu_{s}") for s in SUBJECTS}
    assert per_subject == {"anatomy": 2, "astronomy": 2}  # 4 split evenly over two equal subjects


def test_selection_is_deterministic_nested_and_stratified():
    sizes = {"mmlu_a": 100, "mmlu_b": 10, "mmlu_c": 1}
    first = select(sizes, limit=None, per_subject=3, seed=0)
    assert first == select(sizes, limit=None, per_subject=3, seed=0)
    assert {k: len(v) for k, v in first.indices.items()} == {"mmlu_a": 3, "mmlu_b": 3, "mmlu_c": 1}
    assert select(sizes, limit=None, per_subject=3, seed=1).indices != first.indices
    # a bigger subset contains the smaller one, so N=5 and N=3 runs still pair on their overlap
    bigger = select(sizes, limit=None, per_subject=5, seed=0)
    assert all(set(first.indices[k]) <= set(bigger.indices[k]) for k in sizes)
    # --limit splits in proportion to subject size, every subject keeps at least one item
    limited = select(sizes, limit=20, per_subject=None, seed=0)
    assert sum(map(len, limited.indices.values())) == 20
    assert len(limited.indices["mmlu_a"]) > len(limited.indices["mmlu_b"]) >= len(limited.indices["mmlu_c"]) == 1
    with pytest.raises(PosttrainError, match="smaller than the number of subjects"):
        select(sizes, limit=2, per_subject=None, seed=0)
    # both: --per-subject for a task with subjects, --limit for the others
    assert select(sizes, limit=2, per_subject=2, seed=0).mode == "per_subject"
    with pytest.raises(PosttrainError, match="positive integer"):
        select(sizes, limit=0, per_subject=None, seed=0)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_cais_style_mmlu_is_the_same_data_as_the_csv_release(tiny_gguf, tmp_path, fmt):
    csv_root, cais_root = tmp_path / "csv", tmp_path / "cais"
    write_mmlu_csv(csv_root)
    write_mmlu_cais(cais_root, fmt)
    store = Store(tmp_path / "posttrain.db")
    (a,) = evaluate(tiny_gguf["F16"], ["mmlu"], data_dir=csv_root, per_subject=2, store=store, out_dir=tmp_path / "a")
    (b,) = evaluate(tiny_gguf["F16"], ["mmlu"], data_dir=cais_root, per_subject=2, store=store, out_dir=tmp_path / "b")
    # Same documents and config → same task hash → the second layout reuses the first one's result.
    assert not a.cached and b.cached and a.eval_id == b.eval_id


@pytest.mark.parametrize(("task", "break_it", "file", "column"), [
    ("gsm8k", lambda r: (r / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q"}) + "\n"),
     "gsm8k/test.jsonl", "answer"),
    ("hellaswag", lambda r: (r / "hellaswag" / "hellaswag_val.jsonl").write_text(
        json.dumps({"activity_label": "x", "ctx_a": "a", "endings": [], "label": "0"}) + "\n"),
     "hellaswag/hellaswag_val.jsonl", "ctx_b"),
    ("mmlu", lambda r: (r / "mmlu" / "data" / "test" / "anatomy_test.csv").write_text("q,a,b,c,d\n"),
     "mmlu/data/test/anatomy_test.csv", "answer"),
])
def test_wrong_columns_name_the_file_and_the_column(tiny_gguf, tmp_path, task, break_it, file, column):
    root = tmp_path / "data"
    write_gsm8k(root)
    write_mmlu_csv(root)
    write_hellaswag(root)
    break_it(root)
    with pytest.raises(PosttrainError) as e:
        evaluate(tiny_gguf["F16"], [task], data_dir=root, store=Store(tmp_path / "db"), out_dir=tmp_path / "o")
    assert file in e.value.message and repr(column) in e.value.message


def test_unknown_task_lists_close_matches(tiny_gguf, data_dir, tmp_path):
    with pytest.raises(PosttrainError) as e:
        evaluate(tiny_gguf["F16"], ["hellaswg"], data_dir=data_dir, store=Store(tmp_path / "db"),
                 out_dir=tmp_path / "o")
    assert "hellaswg" in e.value.message and "hellaswag" in (e.value.remedy or "")


def test_without_data_dir_an_unreachable_hub_says_to_pass_data_dir(tiny_gguf, tmp_path):
    # The Hub is not reachable from the test machine (and HF_*_OFFLINE is set): lm-eval's normal loading fails.
    with pytest.raises(PosttrainError) as e:
        evaluate(tiny_gguf["F16"], ["hellaswag"], store=Store(tmp_path / "db"), out_dir=tmp_path / "o")
    assert "hellaswag" in e.value.message and "--data-dir" in (e.value.remedy or "")
