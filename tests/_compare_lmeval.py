"""Real lm-eval runs on tiny local tasks, written the way `lm_eval --output_path X --log_samples` writes them.

Used by the compare tests: a group of two multiple-choice subtasks (with a `subject` field, like
MMLU) and one generative task with two filters (like GSM8K). No Hub access: datasets are jsonl files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SUBJECTS = ("arithmetic", "counting", "ordering")


def write_tasks(root: Path) -> Path:
    """Task YAMLs and their data under `root`; returns the include path."""
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for name, offset in (("a", 0), ("b", 50)):
        rows = []
        for i in range(12):
            x = i + offset
            rows.append({"question": f"{x} plus {i % 5} is", "choices": [str(x + i % 5), str(x + 7), str(2 * x + 3)],
                         "answer": i % 3, "subject": SUBJECTS[i % 3]})
        (tasks / f"mc_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        (tasks / f"cmp_mc_{name}.yaml").write_text(f"""task: cmp_mc_{name}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {tasks / f'mc_{name}.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""", encoding="utf-8")
    (tasks / "cmp_group.yaml").write_text("""group: cmp_group
task:
  - cmp_mc_a
  - cmp_mc_b
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
metadata:
  version: 1.0
""", encoding="utf-8")
    gen = [{"question": f"{i} plus {i} is", "answer": str(2 * i)} for i in range(6)]
    (tasks / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen), encoding="utf-8")
    (tasks / "cmp_gen.yaml").write_text(f"""task: cmp_gen
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {tasks / 'gen.jsonl'}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 4
  do_sample: false
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "^ ?(\\\\d+)"
      - function: take_first
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "(-?[0-9.,]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""", encoding="utf-8")
    return tasks


def run_lm_eval(checkpoint: Path, include_path: Path, output_path: Path, *, tasks=("cmp_group", "cmp_gen"),
                limit: int | None = None) -> Path:
    """Evaluate `checkpoint` with lm-eval's hf backend and write results + samples with lm-eval's own
    EvaluationTracker, exactly as its CLI does with --output_path and --log_samples."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    tracker = EvaluationTracker(output_path=str(output_path))
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={checkpoint},dtype=float32", tasks=list(tasks), device="cpu",
        batch_size=4, limit=limit, log_samples=True, evaluation_tracker=tracker,
        task_manager=TaskManager(include_path=str(include_path)),
    )
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task_name in results["configs"]:
        tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    return output_path
