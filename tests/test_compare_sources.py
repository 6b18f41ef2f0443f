"""compare: loading per-item results from real lm-eval output folders and from a real SQLite store,
and the `posttrain compare` command on both."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from posttrain.compare import ItemResult, compare_items, load_items
from posttrain.contracts import ItemRecord
from posttrain.errors import PosttrainError
from posttrain.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from _compare_lmeval import SUBJECTS, run_lm_eval, write_tasks  # noqa: E402


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posttrain", "compare", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**__import__("os").environ, "COLUMNS": "200"})


# ---------------------------------------------------------------- real lm-eval folders


@pytest.fixture(scope="module")
def lm_eval_runs(tmp_path_factory, tiny_spm, tiny_spm_nobos) -> dict[str, Path]:
    """Two models evaluated by real lm-eval (hf backend) on the same tiny local tasks."""
    root = tmp_path_factory.mktemp("lmeval")
    tasks = write_tasks(root)
    return {"spm": run_lm_eval(tiny_spm, tasks, root / "out-spm"),
            "nobos": run_lm_eval(tiny_spm_nobos, tasks, root / "out-nobos")}


def _results_json(folder: Path) -> dict:
    (path,) = folder.rglob("results_*.json")
    return json.loads(path.read_text())


def _sample_lines(folder: Path, task: str) -> list[dict]:
    (path,) = folder.rglob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_items_from_a_real_lm_eval_folder_reproduce_lm_evals_own_scores(lm_eval_runs):
    folder = lm_eval_runs["spm"]
    label, items = load_items(folder)
    assert label == "tiny-spm"  # the checkpoint folder's name, not its full path
    results = _results_json(folder)["results"]

    by_key: dict[tuple[str, str, str], list[ItemResult]] = defaultdict(list)
    for it in items:
        by_key[(it.task, it.filter, it.metric)].append(it)
    assert set(by_key) == {("cmp_mc_a", "none", "acc"), ("cmp_mc_a", "none", "acc_norm"),
                           ("cmp_mc_b", "none", "acc"), ("cmp_mc_b", "none", "acc_norm"),
                           ("cmp_gen", "strict-match", "exact_match"), ("cmp_gen", "flexible-extract", "exact_match")}
    for (task, flt, metric), group in by_key.items():
        mean = sum(i.value for i in group) / len(group)
        assert mean == pytest.approx(results[task][f"{metric},{flt}"])  # same number lm-eval reports
    # The group (like MMLU over its subjects) aggregates over all its items, weighted by size.
    group_items = [i for i in items if i.group == "cmp_group" and i.metric == "acc"]
    assert len(group_items) == 24
    assert sum(i.value for i in group_items) / 24 == pytest.approx(results["cmp_group"]["acc,none"])
    assert {i.group for i in items if i.task == "cmp_gen"} == {None}

    lines = {(s["doc_id"], s["filter"]): s for s in _sample_lines(folder, "cmp_mc_a")}
    for it in by_key[("cmp_mc_a", "none", "acc")]:
        s = lines[(it.doc_id, "none")]
        assert it.doc_hash == s["doc_hash"]
        assert it.cluster == s["doc"]["subject"] in SUBJECTS  # MMLU-style default cluster
        assert it.question.startswith("Question: ") and s["doc"]["question"] in it.question
        assert it.target == s["doc"]["choices"][s["doc"]["answer"]]
        assert it.response in s["doc"]["choices"]
        # The rendered answer is the one lm-eval scored: right iff it is the gold option.
        assert it.value == float(it.response == it.target)
    for it in by_key[("cmp_mc_a", "none", "acc_norm")]:
        assert it.value == float(it.response == it.target)
    for it in by_key[("cmp_gen", "strict-match", "exact_match")]:
        assert it.target == str(2 * it.doc_id) and it.response is not None


@pytest.mark.slow
def test_comparing_two_real_lm_eval_folders(lm_eval_runs):
    new_label, new = load_items(lm_eval_runs["nobos"])
    base_label, base = load_items(lm_eval_runs["spm"])
    doc = json.loads(json.dumps(compare_items(new, base, new_label=new_label, baseline_label=base_label,
                                              n_boot=500), allow_nan=False))
    keys = [(c["task"], c["filter"], c["metric"]) for c in doc["comparisons"]]
    assert keys == [("cmp_gen", "flexible-extract", "exact_match"), ("cmp_gen", "strict-match", "exact_match"),
                    ("cmp_group", "none", "acc"), ("cmp_group", "none", "acc_norm")]
    new_results, base_results = _results_json(lm_eval_runs["nobos"]), _results_json(lm_eval_runs["spm"])
    acc = doc["comparisons"][2]
    assert acc["n"] == 24 and acc["n_only_new"] == acc["n_only_baseline"] == 0
    assert acc["new"]["mean"] == pytest.approx(new_results["results"]["cmp_group"]["acc,none"])
    assert acc["baseline"]["mean"] == pytest.approx(base_results["results"]["cmp_group"]["acc,none"])
    # Default cluster: the doc's `subject` field (as MMLU has), per leaf task.
    assert acc["diff"]["cluster_key"] == "cluster" and acc["diff"]["n_clusters"] == 2 * len(SUBJECTS)
    # Six clusters are too few for the clustered SE to decide: it is reported, McNemar decides.
    assert acc["diff"]["se_clustered"] is not None and acc["test"]["name"] == "mcnemar_exact"
    # A named field (as `--cluster cmp_group=question` does): every question is its own cluster,
    # so there is nothing to cluster and the paired test is McNemar's.
    named = {"cmp_group": "question"}
    _, new_q = load_items(lm_eval_runs["nobos"], clusters=named)
    _, base_q = load_items(lm_eval_runs["spm"], clusters=named)
    q = compare_items(new_q, base_q, new_label=new_label, baseline_label=base_label, clusters=named)
    assert q["comparisons"][2]["diff"]["n_clusters"] is None and q["comparisons"][2]["test"]["name"] == "mcnemar_exact"
    assert all(c["verdict"] in ("better", "worse", "no significant difference") for c in doc["comparisons"])
    for d in doc["disagreements"]:
        assert d["new_value"] != d["baseline_value"] and "plus" in d["question"]
    # Clustering off on request: the unclustered McNemar test decides.
    off = compare_items(new, base, new_label=new_label, baseline_label=base_label, clusters={"cmp_group": "none"})
    assert off["comparisons"][2]["test"]["name"] == "mcnemar_exact"


@pytest.mark.slow
def test_a_subset_run_is_refused_and_an_unknown_cluster_field_named(lm_eval_runs, tmp_path):
    # The same model evaluated on 4 documents (as with --limit 4): the item sets do not pair.
    subset = tmp_path / "subset"
    shutil.copytree(lm_eval_runs["nobos"], subset)
    for path in subset.rglob("samples_*.jsonl"):
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:4]))
    _, new = load_items(subset)
    _, base = load_items(lm_eval_runs["spm"])
    with pytest.raises(PosttrainError, match=r"cannot pair cmp_mc_a \(acc, filter none\): only 4 items match .*8 only in baseline"):
        compare_items(new, base, new_label="subset", baseline_label="full")
    with pytest.raises(PosttrainError, match="no field 'topic'") as e:
        load_items(lm_eval_runs["spm"], clusters={"cmp_group": "topic"})
    assert "subject" in e.value.remedy


@pytest.mark.slow
def test_cli_compares_two_lm_eval_folders(lm_eval_runs, tmp_path):
    out = tmp_path / "cmp.json"
    proc = run_cli(str(lm_eval_runs["nobos"]), str(lm_eval_runs["spm"]), "--json", "--out", str(out),
                   "--n-boot", "200", "--mde", "0.1")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc == json.loads(out.read_text())
    assert doc["new"] == {"label": "tiny-nobos", "source": str(lm_eval_runs["nobos"])}
    assert "detecting 0.1 at 80% power needs" in proc.stderr
    table = run_cli(str(lm_eval_runs["nobos"]), str(lm_eval_runs["spm"]), "--n-boot", "200")
    assert table.returncode == 0, table.stderr
    assert "tiny-nobos vs tiny-spm" in table.stdout and "cmp_group" in table.stdout
    bad = run_cli(str(lm_eval_runs["nobos"]), str(tmp_path))
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error:") and "no lm-eval samples" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- the posttrain store


def _item_rows(values: list[float], task: str, group: str | None = None) -> list[ItemRecord]:
    return [ItemRecord(task=task, group=group, doc_id=i, doc_hash=f"{task}-hash-{i}", filter="none", metric="acc",
                       value=v, choice_ll=(-1.0, -2.0), question=f"q{i}", target="A", response="A" if v else "B",
                       cluster=f"subject{i % 4}") for i, v in enumerate(values)]


@pytest.fixture
def store(tmp_path) -> Store:
    """A real store with two models' evaluations written by the evaluate stage's own writer."""

    store = Store(tmp_path / "posttrain.db")
    base = [1.0, 0.0, 1.0, 1.0] * 25
    new = base[:]
    for i in range(0, 100, 5):
        new[i] = 0.0  # the candidate loses items the baseline got right
    record = {"backend": "posttrain-llamacpp", "task": "mmlu", "task_hash": "t", "task_version": "1",
              "n_shot": 0, "selection_json": None, "gen_args_json": None, "harness_version": "0.4.13",
              "aggregates_json": None, "env_json": None, "seconds": 1.0, "tokens": 10, "n_items": 100,
              "output_dir": None}
    ids = {}
    for model, values in (("base-F16", base), ("tiny-Q4_K_M", new)):
        ids[model] = store.evals.save(f"key-{model}", record={**record, "model_id": model},
                                      items=_item_rows(values[:50], "mmlu_a", "mmlu") + _item_rows(values[50:], "mmlu_b", "mmlu"))
    with store.connect() as db:
        db.execute("INSERT INTO runs (id, checkpoint, created_at) VALUES ('r1', '/ckpt', '2026-11-25')")
        db.execute("INSERT INTO run_evals VALUES ('r1', 'baseline', 'base-F16', ?)", (ids["base-F16"],))
        db.execute("INSERT INTO run_evals VALUES ('r1', 'candidate', 'tiny-Q4_K_M', ?)", (ids["tiny-Q4_K_M"],))
    store.ids = ids
    return store


def test_store_items_load_by_eval_id_and_by_run_label(store):
    label, by_eval = load_items(f"eval:{store.ids['tiny-Q4_K_M']}", store=store)
    assert label == "tiny-Q4_K_M" and len(by_eval) == 100
    first = next(i for i in by_eval if i.task == "mmlu_a" and i.doc_id == 1)
    assert first == ItemResult(task="mmlu_a", group="mmlu", doc_id=1, doc_hash="mmlu_a-hash-1", filter="none",
                               metric="acc", value=0.0, cluster="subject1", question="q1", target="A", response="B")
    run_label, by_run = load_items("run:r1:tiny-Q4_K_M", store=store)
    assert run_label == "tiny-Q4_K_M" and sorted(by_run, key=repr) == sorted(by_eval, key=repr)
    _, by_role = load_items("run:r1:baseline", store=store)  # a role works where the label is unknown
    assert len(by_role) == 100

    base_label, base = load_items("run:r1:base-F16", store=store)
    (c,) = compare_items(by_run, base, new_label=run_label, baseline_label=base_label)["comparisons"]
    assert c["task"] == "mmlu" and c["n"] == 100
    assert c["diff"]["cluster_key"] == "subject" and c["diff"]["n_clusters"] == 8  # 4 subjects × 2 leaf tasks
    # Eight clusters are too few to lean on: the clustered SE is reported, McNemar decides.
    assert c["diff"]["se_clustered"] is not None
    assert (c["test"]["name"], c["test"]["b"], c["test"]["c"]) == ("mcnemar_exact", 0, 15)


def test_store_references_fail_clearly(store):
    with pytest.raises(PosttrainError, match="no evaluation with id 99"):
        load_items("eval:99", store=store)
    with pytest.raises(PosttrainError, match=r"no evaluations labelled 'nope' \(it has: .*tiny-Q4_K_M"):
        load_items("run:r1:nope", store=store)
    with pytest.raises(PosttrainError, match="no store was given"):
        load_items("eval:1")
    with pytest.raises(PosttrainError, match="bad run reference"):
        load_items("run:r1", store=store)


def test_cli_compares_store_references(store, tmp_path):
    home = store.path.parent
    proc = run_cli("run:r1:tiny-Q4_K_M", "run:r1:base-F16", "--home", str(home), "--json")
    assert proc.returncode == 0, proc.stderr
    (c,) = json.loads(proc.stdout)["comparisons"]
    assert c["new_label"] == "tiny-Q4_K_M" and c["baseline_label"] == "base-F16"
    table = run_cli(f"eval:{store.ids['tiny-Q4_K_M']}", f"eval:{store.ids['base-F16']}", "--home", str(home))
    assert table.returncode == 0, table.stderr
    assert c["sentence"] in " ".join(table.stdout.split())
    missing = run_cli("eval:1", "eval:2", "--home", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no posttrain store" in missing.stderr


def test_cli_refuses_different_shot_counts_from_the_store(store):
    with store.connect() as db:
        db.execute("UPDATE evals SET n_shot = 5 WHERE id = ?", (store.ids["tiny-Q4_K_M"],))
    proc = run_cli("run:r1:tiny-Q4_K_M", "run:r1:base-F16", "--home", str(store.path.parent))
    assert proc.returncode == 1
    assert "mmlu was evaluated with shots 5 for tiny-Q4_K_M but 0 for base-F16" in proc.stderr
    assert "--num_fewshot" in proc.stderr


@pytest.mark.slow
def test_cli_refuses_lm_eval_folders_with_different_shot_counts(lm_eval_runs, tmp_path):
    five_shot = tmp_path / "five"
    shutil.copytree(lm_eval_runs["nobos"], five_shot)
    (results_path,) = five_shot.rglob("results_*.json")
    results = json.loads(results_path.read_text())
    results["n-shot"]["cmp_mc_a"] = 5
    results_path.write_text(json.dumps(results))
    proc = run_cli(str(five_shot), str(lm_eval_runs["spm"]))
    assert proc.returncode == 1
    assert "cmp_mc_a was evaluated with shots 5 for tiny-nobos but 0 for tiny-spm" in proc.stderr
