"""Offline lm-eval tasks: YAMLs that `include:` the installed official task and swap only its data source.

lm-eval 0.4.13 cannot be pointed at local files for a Hub task by `HF_DATASETS_OFFLINE` alone; what
works is a task YAML that includes the official one and overrides `dataset_path`, `dataset_name`,
`dataset_kwargs.data_files`, `task` and `tag`, found through `TaskManager(include_path=...)`. Prompts,
few-shot settings, filters and metrics therefore stay exactly lm-eval's. Generated tasks keep the
official names, so offline and Hub results pair with each other.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import yaml

from posttrain.errors import PosttrainError

OFFLINE_TASKS = ("gsm8k", "mmlu", "hellaswag")

GSM8K_COLUMNS = ("question", "answer")
HELLASWAG_COLUMNS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")
MMLU_CSV_FIELDS = ("question", "A", "B", "C", "D", "answer")
MMLU_LETTERS = "ABCD"


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


@cache
def default_task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()


def check_task_names(tasks: Iterable[str], *, offline_names: Iterable[str] = ()) -> None:
    """Unknown task names → PosttrainError with lm-eval's closest names."""
    known = set(default_task_manager().all_tasks) | set(offline_names)
    for name in tasks:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
            hint = f"did you mean: {', '.join(close)}?" if close else "see `lm_eval ls tasks` for the names lm-eval knows"
            raise PosttrainError(f"unknown lm-eval task {name!r}", remedy=hint)


# ---------------------------------------------------------------- reading the user's files

def _missing(path: Path, column: str, where: str = "") -> PosttrainError:
    return PosttrainError(f"{path}: missing column {column!r}{where}",
                          remedy="the file must be in the task's official layout (see docs/evaluate.md)")


def read_rows(path: Path, required: Iterable[str]) -> list[dict]:
    """All rows of a JSONL or parquet file, each checked for the required columns."""
    required = list(required)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for col in required:
            if col not in table.column_names:
                raise _missing(path, col)
        return table.to_pylist()
    rows = []
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise PosttrainError(f"{path}:{lineno}: not UTF-8 text ({e.reason})") from None
            except json.JSONDecodeError as e:
                raise PosttrainError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise PosttrainError(f"{path}:{lineno}: JSON nested too deeply") from None
            if not isinstance(row, dict):
                raise PosttrainError(f"{path}:{lineno}: a row must be a JSON object, not a {type(row).__name__}")
            for col in required:
                if col not in row:
                    raise _missing(path, col, f" (line {lineno})")
            rows.append(row)
    if not rows:
        raise PosttrainError(f"{path}: no rows")
    return rows


def _task_root(data_dir: Path, name: str) -> Path:
    sub = data_dir / name
    return sub if sub.is_dir() else data_dir


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_yaml(path: Path, cfg: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _override(official: Path, task: str, data_files: dict[str, str], fmt: str = "json") -> dict:
    return {
        "include": str(official),
        "task": task,
        "tag": [],
        "dataset_path": fmt,
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files},
    }


# ---------------------------------------------------------------- GSM8K

def _gsm8k(data_dir: Path, out: Path) -> list[str]:
    root = _task_root(data_dir, "gsm8k")
    files: dict[str, str] = {}
    for split in ("test", "train"):
        for ext in ("jsonl", "parquet"):
            path = root / f"{split}.{ext}"
            if path.is_file():
                read_rows(path, GSM8K_COLUMNS)
                files[split] = str(path.resolve())
                break
    if "test" not in files:
        raise PosttrainError(f"GSM8K: no test.jsonl in {root}",
                             remedy="put the official test.jsonl (and train.jsonl for few-shot) there")
    fmt = "parquet" if files["test"].endswith(".parquet") else "json"
    if len({Path(f).suffix for f in files.values()}) > 1:
        raise PosttrainError(f"GSM8K: mix of JSONL and parquet in {root}", remedy="use one format")
    _write_yaml(out / "gsm8k" / "gsm8k.yaml",
                _override(lm_eval_tasks_dir() / "gsm8k" / "gsm8k.yaml", "gsm8k", files, fmt))
    return ["gsm8k"]


# ---------------------------------------------------------------- HellaSwag

def _hellaswag_val(root: Path) -> Path:
    """`hellaswag_val.jsonl`, else the one `hellaswag_val*.jsonl` in the official schema (partial copies
    are often named `hellaswag_val_<something>.jsonl`); every candidate's columns are checked."""
    exact = root / "hellaswag_val.jsonl"
    candidates = [exact] if exact.is_file() else sorted(root.glob("hellaswag_val*.jsonl"))
    if not candidates:
        raise PosttrainError(f"HellaSwag: no hellaswag_val.jsonl in {root}",
                             remedy="put the official validation file (ctx_a, ctx_b, activity_label, endings, label…) there")
    first_error = None
    for path in candidates:
        try:
            read_rows(path, HELLASWAG_COLUMNS)
            return path
        except PosttrainError as e:
            first_error = first_error or e
    raise first_error


def _hellaswag(data_dir: Path, out: Path) -> list[str]:
    root = _task_root(data_dir, "hellaswag")
    path = _hellaswag_val(root)
    files = {"validation": str(path.resolve())}
    if (train := root / "hellaswag_train.jsonl").is_file():
        read_rows(train, HELLASWAG_COLUMNS)
        files["train"] = str(train.resolve())
    # The official YAML's `!function utils.process_docs` resolves relative to the YAML that names it,
    # so it keeps working through `include:` from here.
    cfg = _override(lm_eval_tasks_dir() / "hellaswag" / "hellaswag.yaml", "hellaswag", files)
    if "train" not in files:
        # The official task draws few-shot examples from `train`; without that file, say there is none
        # (lm-eval then fails clearly if --num-fewshot > 0) instead of a KeyError at load time.
        cfg["training_split"] = None
    _write_yaml(out / "hellaswag" / "hellaswag.yaml", cfg)
    return ["hellaswag"]


# ---------------------------------------------------------------- MMLU

def _official_mmlu_subjects() -> dict[str, Path]:
    folder = lm_eval_tasks_dir() / "mmlu" / "default"
    return {p.stem.removeprefix("mmlu_"): p for p in sorted(folder.glob("mmlu_*.yaml"))}


def _mmlu_from_csv(split_dir: Path, split: str) -> dict[str, list[dict]]:
    """The original release: <subject>_<split>.csv, no header, question,A,B,C,D,answer-letter."""
    by_subject: dict[str, list[dict]] = {}
    for path in sorted(split_dir.glob(f"*_{split}.csv")):
        subject = path.name.removesuffix(f"_{split}.csv")
        rows = []
        with path.open(encoding="utf-8", newline="") as fh:
            for lineno, rec in enumerate(csv.reader(fh), 1):
                if len(rec) < len(MMLU_CSV_FIELDS):
                    raise _missing(path, MMLU_CSV_FIELDS[len(rec)], f" (row {lineno} has {len(rec)} fields)")
                answer = rec[5].strip().upper()
                if answer not in MMLU_LETTERS:
                    raise PosttrainError(f"{path}: row {lineno}: answer {rec[5]!r} is not one of A–D")
                rows.append({"question": rec[0], "subject": subject, "choices": rec[1:5],
                             "answer": MMLU_LETTERS.index(answer)})
        by_subject[subject] = rows
    return by_subject


def _mmlu_answer(value, path: Path) -> int:
    if isinstance(value, str) and value.strip().upper() in MMLU_LETTERS:
        return MMLU_LETTERS.index(value.strip().upper())
    try:
        answer = int(value)
    except (TypeError, ValueError):
        answer = -1
    if answer not in range(4):
        raise PosttrainError(f"{path}: answer {value!r} is neither 0–3 nor A–D")
    return answer


def _mmlu_from_table(path: Path) -> dict[str, list[dict]]:
    """cais-style (question, subject, choices, answer 0–3) or flat (subject, question, A, B, C, D, answer)."""
    first = read_rows(path, ("question", "subject", "answer"))
    flat = "choices" not in first[0]
    rows = read_rows(path, ("question", "subject", "answer") + (("A", "B", "C", "D") if flat else ("choices",)))
    by_subject: dict[str, list[dict]] = {}
    for row in rows:
        choices = [row[c] for c in "ABCD"] if flat else list(row["choices"])
        if len(choices) != 4:
            raise PosttrainError(f"{path}: an item has {len(choices)} choices, MMLU has 4")
        by_subject.setdefault(row["subject"], []).append(
            {"question": row["question"], "subject": row["subject"], "choices": choices,
             "answer": _mmlu_answer(row["answer"], path)})
    return by_subject


def _mmlu_split(root: Path, split: str) -> dict[str, list[dict]] | None:
    for folder in (root / "data" / split, root / split):
        if folder.is_dir() and any(folder.glob(f"*_{split}.csv")):
            return _mmlu_from_csv(folder, split)
    for name in (f"mmlu_{split}", split):
        for ext in ("jsonl", "parquet"):
            if (path := root / f"{name}.{ext}").is_file():
                return _mmlu_from_table(path)
    return None


def _mmlu(data_dir: Path, out: Path) -> list[str]:
    root = _task_root(data_dir, "mmlu")
    test = _mmlu_split(root, "test")
    if not test:
        raise PosttrainError(f"MMLU: no test data in {root}",
                             remedy="give data/test/<subject>_test.csv (original release) or mmlu_test.jsonl/test.parquet (cais-style)")
    dev = _mmlu_split(root, "dev") or {}
    official = _official_mmlu_subjects()
    unknown = sorted(set(test) - set(official))
    if unknown:
        raise PosttrainError(f"MMLU: unknown subject(s) {', '.join(unknown)} in {root}",
                             remedy=f"subjects are lm-eval's: {', '.join(list(official)[:4])}, …")
    leaves = []
    for subject in sorted(test):
        name = f"mmlu_{subject}"
        files = {"test": str(out / "mmlu" / "data" / f"{subject}_test.jsonl")}
        _write_jsonl(Path(files["test"]), test[subject])
        if dev.get(subject):
            files["dev"] = str(out / "mmlu" / "data" / f"{subject}_dev.jsonl")
            _write_jsonl(Path(files["dev"]), dev[subject])
        _write_yaml(out / "mmlu" / f"{name}.yaml", _override(official[subject], name, files))
        leaves.append(name)
    _write_yaml(out / "mmlu" / "_mmlu.yaml", {
        "group": "mmlu",
        "task": leaves,
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 2},
    })
    return ["mmlu", *leaves]


_BUILDERS = {"gsm8k": _gsm8k, "mmlu": _mmlu, "hellaswag": _hellaswag}


def offline_family(task: str) -> str | None:
    if task in _BUILDERS:
        return task
    if task.startswith("mmlu_") and task.removeprefix("mmlu_") in _official_mmlu_subjects():
        return "mmlu"
    return None


def write_offline_tasks(tasks: Iterable[str], data_dir: Path, out: Path) -> list[str]:
    """Write the YAMLs (and converted data) for `tasks` under `out` (replaced whole); return the task names made."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise PosttrainError(f"--data-dir {data_dir} is not a directory")
    families = []
    for task in tasks:
        family = offline_family(task)
        if family is None:
            raise PosttrainError(f"no offline data layout known for task {task!r}",
                                 remedy=f"--data-dir supports {', '.join(OFFLINE_TASKS)}; run other tasks without it")
        if family not in families:
            families.append(family)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tasks-", dir=out.parent))
    try:
        made = [name for family in families for name in _BUILDERS[family](data_dir, staging)]
        # Data paths inside the YAMLs must name the final folder, not the staging one.
        for path in staging.rglob("*.yaml"):
            path.write_text(path.read_text(encoding="utf-8").replace(str(staging), str(out)), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return made
