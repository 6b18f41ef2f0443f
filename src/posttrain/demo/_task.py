"""The demo's own task: counting up or down by one from N, as an lm-eval multiple-choice task.

Why this task: a two-layer Llama learns it in about a minute of CPU training, and it generalises
(test numbers never appear in training, so the gain is learning, not memorising). Four choices give
a 25 % chance level; the distractors are the off-by-one mistakes an untrained model makes (N itself,
N±2, the other direction), so guessing from surface form does not help. Scoring is loglikelihood
multiple choice: cheap in-process, four short continuations per item.

Everything is written by the project into a directory (train/test JSONL + task YAML), so lm-eval
runs it offline with `TaskManager(include_path=dir)`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from posttrain._files import write_text_atomic

TASK_NAME = "posttrain_demo_numbers"
TASK_VERSION = 1
KINDS = ("up", "down")
_MAX_NUMBER = 999


@dataclass(frozen=True)
class DemoTask:
    """Where the demo task lives: pass `include_path` to lm-eval's TaskManager, run `name`."""

    directory: Path
    name: str
    yaml_path: Path
    train_path: Path
    test_path: Path
    n_train: int
    n_test: int

    @property
    def include_path(self) -> str:
        return str(self.directory)


def question(kind: str, n: int) -> str:
    # Short on purpose (~15 tokens: fast to train). The wording is chosen so that the Hugging Face
    # tokenizer and llama.cpp's SentencePiece tokenizer split every item identically: for the tiny
    # tokenizer they disagree on some words ("after" is f+t+er in one, f+te+r in the other), and a
    # model then sees different tokens when evaluated as GGUF than it was trained on.
    return f"{n} counts {kind} to"


def answer(kind: str, n: int) -> int:
    return n + 1 if kind == "up" else n - 1


def _item(kind: str, n: int, rng: random.Random) -> dict:
    right = answer(kind, n)
    wrong_way = n - 1 if kind == "up" else n + 1
    step = 1 if kind == "up" else -1
    candidates = [n, wrong_way, n + 2 * step, right + 10 * step, right - 10 * step]
    distractors: list[int] = []
    for c in candidates:
        if c >= 0 and c != right and c not in distractors:
            distractors.append(c)
    choices = [right, *rng.sample(distractors, 3)]
    rng.shuffle(choices)
    return {
        "kind": kind,
        "number": n,
        "question": question(kind, n),
        "answer": str(right),
        "choices": [str(c) for c in choices],
        "label": choices.index(right),
    }


def make_items(*, n_test: int = 300, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, test): every (kind, N) pair for N in 1..998, test pairs held out from training."""
    rng = random.Random(seed)
    pairs = [(kind, n) for kind in KINDS for n in range(1, _MAX_NUMBER)]
    rng.shuffle(pairs)
    test_pairs = sorted(pairs[:n_test], key=lambda p: (KINDS.index(p[0]), p[1]))
    train_pairs = pairs[n_test:]
    test = [_item(kind, n, rng) for kind, n in test_pairs]
    train = [_item(kind, n, rng) for kind, n in train_pairs]
    return train, test


def training_texts(items: list[dict]) -> list[str]:
    """What the model is trained on: the same prompt the evaluation uses, then the answer."""
    return [f"{it['question']} {it['answer']}" for it in items]


def _jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(it, sort_keys=True) + "\n" for it in items)


def _task_yaml(name: str, train: Path, test: Path) -> str:
    # json.dumps quotes the paths safely for YAML (JSON strings are valid YAML scalars).
    return f"""\
# Written by posttrain (posttrain.demo): the demo's own task, runnable offline.
task: {name}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    train: {json.dumps(str(train))}
    test: {json.dumps(str(test))}
output_type: multiple_choice
training_split: train
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: label
doc_to_choice: choices
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: {TASK_VERSION}.0
"""


def write_demo_task(directory: str | Path, *, n_test: int = 300, seed: int = 0,
                    name: str = TASK_NAME) -> DemoTask:
    """Write train.jsonl, test.jsonl and `<name>.yaml` into `directory`; deterministic for a seed."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    train, test = make_items(n_test=n_test, seed=seed)
    train_path, test_path = directory / "train.jsonl", directory / "test.jsonl"
    yaml_path = directory / f"{name}.yaml"
    write_text_atomic(train_path, _jsonl(train))
    write_text_atomic(test_path, _jsonl(test))
    write_text_atomic(yaml_path, _task_yaml(name, train_path, test_path))
    return DemoTask(directory=directory, name=name, yaml_path=yaml_path, train_path=train_path,
                    test_path=test_path, n_train=len(train), n_test=len(test))


def read_items(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
