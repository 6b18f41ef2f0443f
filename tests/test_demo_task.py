"""The demo's own lm-eval task: written by posttrain, loaded and run offline by real lm-eval."""

from __future__ import annotations

import yaml

from posttrain.demo import TASK_NAME, make_items, read_items, write_demo_task


def _lm_eval(model_dir, task, limit=None):
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", device="cpu",
                                   tasks=[task.name], task_manager=TaskManager(include_path=task.include_path),
                                   limit=limit, log_samples=True, batch_size=8)


def test_task_yaml_runs_offline_in_lm_eval_on_a_tiny_model(tmp_path, tiny_spm):
    task = write_demo_task(tmp_path / "task")
    res = _lm_eval(tiny_spm, task, limit=6)
    acc = res["results"][TASK_NAME]["acc,none"]
    assert 0.0 <= acc <= 1.0
    samples = res["samples"][TASK_NAME]
    assert len(samples) == 6
    first = read_items(task.test_path)[0]
    # Four loglikelihood requests per item: the prompt, then each choice after one space.
    args = samples[0]["arguments"]
    assert [a[1] for a in args] == [f" {c}" for c in first["choices"]]
    assert args[0][0] == first["question"]
    assert samples[0]["target"] == first["label"]


def test_task_yaml_is_a_real_multiple_choice_task_with_absolute_data_files(tmp_path):
    task = write_demo_task(tmp_path / "task")
    cfg = yaml.safe_load(task.yaml_path.read_text())
    assert cfg["task"] == TASK_NAME and cfg["output_type"] == "multiple_choice"
    assert cfg["dataset_path"] == "json"
    files = cfg["dataset_kwargs"]["data_files"]
    assert files == {"train": str(task.train_path), "test": str(task.test_path)}
    assert task.n_test == len(read_items(task.test_path)) == 300
    assert task.n_train == len(read_items(task.train_path))


def test_items_are_deterministic_four_way_and_test_numbers_are_held_out():
    train, test = make_items(seed=0)
    assert (train, test) == make_items(seed=0)
    assert make_items(seed=1) != (train, test)
    seen = {(it["kind"], it["number"]) for it in train}
    assert not seen & {(it["kind"], it["number"]) for it in test}
    for it in test + train:
        assert len(set(it["choices"])) == 4
        right = it["number"] + 1 if it["kind"] == "up" else it["number"] - 1
        assert it["choices"][it["label"]] == str(right) == it["answer"]
    # The right answer sits in every position about equally often: position gives nothing away.
    positions = [sum(it["label"] == k for it in test) for k in range(4)]
    assert min(positions) > 0.15 * len(test)


def test_every_item_tokenizes_the_same_in_transformers_and_llama_cpp(tiny_spm, tiny_gguf):
    """The demo trains with the HF tokenizer and evaluates GGUF files with llama.cpp's: any item they
    split differently would be scored on tokens the model never saw in that form."""
    import llama_cpp
    from transformers import AutoTokenizer

    from posttrain.demo._task import training_texts

    hf = AutoTokenizer.from_pretrained(tiny_spm)  # make_tiny(seed=0): the demo model's tokenizer
    cpp = llama_cpp.Llama(str(tiny_gguf["F16"]), vocab_only=True, verbose=False)
    train, test = make_items(seed=0)
    texts = training_texts(train) + [f"{it['question']} {c}" for it in test for c in it["choices"]]
    differ = [t for t in texts if hf(t)["input_ids"] != cpp.tokenize(t.encode(), add_bos=True)]
    assert not differ, f"{len(differ)} of {len(texts)} differ, e.g. {differ[0]!r}"


def test_task_runs_on_a_gguf_in_process(tmp_path, tiny_gguf):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import posttrain.evaluate  # noqa: F401  registers the posttrain-llamacpp backend

    task = write_demo_task(tmp_path / "task")
    res = lm_eval.simple_evaluate(model="posttrain-llamacpp", model_args=f"model={tiny_gguf['Q4_K_M']}",
                                  tasks=[task.name], task_manager=TaskManager(include_path=task.include_path),
                                  limit=5, log_samples=True)
    assert len(res["samples"][TASK_NAME]) == 5
    assert 0.0 <= res["results"][TASK_NAME]["acc,none"] <= 1.0
