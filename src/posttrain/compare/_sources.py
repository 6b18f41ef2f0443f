"""Where per-item results come from: an lm-eval `--output_path` folder written with `--log_samples`,
or the posttrain store (`eval:ID[,ID…]`, `run:RUN_ID:LABEL`)."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from posttrain._lm_eval_items import RERUN as _RERUN
from posttrain._lm_eval_items import sample_items
from posttrain.compare._items import ItemResult
from posttrain.errors import PosttrainError
from posttrain.store import Store

# Doc fields that name a natural cluster when the user names none: MMLU's subject, HellaSwag's
# activity label (items written from the same activity share vocabulary and difficulty).
DEFAULT_CLUSTER_FIELDS = ("subject", "activity_label")
_SAMPLES_RE = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[\d\-.]+)\.jsonl$")
_RESULTS_RE = re.compile(r"^results_(?P<date>\d{4}-\d{2}-\d{2}T[\d\-.]+)\.json$")


def parse_clusters(spec: str | None) -> dict[str, str]:
    """`mmlu=subject,hellaswag=source_id` → {"mmlu": "subject", "hellaswag": "source_id"}."""
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        task, sep, fld = part.partition("=")
        if not sep or not task.strip() or not fld.strip():
            raise PosttrainError(f"bad --cluster entry {part!r}", remedy="write TASK=FIELD[,TASK=FIELD…], e.g. mmlu=subject")
        out[task.strip()] = fld.strip()
    return out


# ---------------------------------------------------------------- lm-eval folder


def _pick_run_folder(root: Path) -> tuple[Path, str | None]:
    """The folder holding samples_*.jsonl, and the date id of its newest lm-eval run."""
    candidates = sorted({p.parent for p in root.rglob("samples_*.jsonl")})
    if not candidates:
        raise PosttrainError(f"{root} holds no lm-eval samples_*.jsonl files",
                             remedy="run lm-eval with --log_samples --output_path DIR, then pass DIR")
    if len(candidates) > 1:
        names = ", ".join(str(c.relative_to(root)) or "." for c in candidates)
        raise PosttrainError(f"{root} holds results of several models ({names})",
                             remedy="pass the folder of the one model to compare")
    folder = candidates[0]
    dates = sorted(m["date"] for p in folder.glob("results_*.json") if (m := _RESULTS_RE.match(p.name)))
    return folder, (dates[-1] if dates else None)


def _latest_samples(folder: Path, date: str | None) -> dict[str, Path]:
    """Task → samples file: those of the newest results file's run, else the newest per task."""
    by_task: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for p in folder.glob("samples_*.jsonl"):
        if m := _SAMPLES_RE.match(p.name):
            by_task[m["task"]].append((m["date"], p))
    if date is not None:
        same_run = {t: p for t, files in by_task.items() for d, p in files if d == date}
        if same_run:
            return same_run
    return {t: max(files)[1] for t, files in by_task.items()}


def _read_results(path: Path) -> dict:
    """lm-eval's results_*.json as an object, or a PosttrainError that names the file and the line."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PosttrainError(f"{path} is not UTF-8 text (byte {e.start})", remedy=_RERUN) from None
    except json.JSONDecodeError as e:
        raise PosttrainError(f"{path}:{e.lineno}:{e.colno} is not JSON ({e.msg})", remedy=_RERUN) from None
    except RecursionError:
        raise PosttrainError(f"{path} is nested too deeply to be an lm-eval results file", remedy=_RERUN) from None
    if not isinstance(doc, dict):
        raise PosttrainError(f"{path} holds a JSON {type(doc).__name__}, not lm-eval's results object",
                             remedy=_RERUN)
    return doc


def _mapping(doc: dict, key: str) -> dict:
    """`doc[key]` when it is an object; a field of the wrong type counts as absent (these are optional)."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _group_of(results: dict) -> dict[str, str]:
    """Leaf task → top-level group, from lm-eval's `group_subtasks` (groups may nest)."""
    subtasks = {g: [c for c in children if isinstance(c, str)]
                for g, children in _mapping(results, "group_subtasks").items() if isinstance(children, list)}
    parent = {child: g for g, children in subtasks.items() for child in children}
    out = {}
    for leaf in {c for cs in subtasks.values() for c in cs} - subtasks.keys():
        top, seen = leaf, {leaf}
        while top in parent and parent[top] not in seen:  # a damaged file may name a cycle
            top = parent[top]
            seen.add(top)
        out[leaf] = top
    return out


def _loglikelihoods(sample: dict) -> list[float] | None:
    try:
        return [float(r[0]) for r in sample["filtered_resps"]]
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def _choices(sample: dict, delimiter: str) -> list[str] | None:
    """The answer options as the task defines them: each request's continuation minus the
    target delimiter lm-eval put in front of it (acc_norm divides by the option's own length)."""
    args = sample.get("arguments")
    if not isinstance(args, dict):
        return None
    try:
        conts = [str(args[f"gen_args_{i}"]["arg_1"]) for i in range(len(args))]
    except (KeyError, TypeError):
        return None
    return [c[len(delimiter):] if delimiter and c.startswith(delimiter) else c for c in conts]


def _question(sample: dict) -> str | None:
    args = sample.get("arguments")
    if isinstance(args, dict) and isinstance(args.get("gen_args_0"), dict):
        prompt = str(args["gen_args_0"].get("arg_0", ""))
        # The prompt ends with this item's own question; few-shot examples come before it.
        text = prompt.rsplit("\n\n", 1)[-1].strip()
        return text or None
    return None


def _render_answers(sample: dict, metric: str, delimiter: str) -> tuple[str | None, str | None]:
    """(target, response) as a person reads them: the chosen/gold option's text for multiple choice,
    the filtered generation for generative tasks."""
    target = sample.get("target")
    resps = sample.get("filtered_resps")
    lls, choices = _loglikelihoods(sample), _choices(sample, delimiter)
    if lls and choices and len(lls) == len(choices) and len(lls) > 1:
        scores = lls
        if metric == "acc_norm":  # lm-eval normalises by the option's length in characters
            scores = [ll / max(1, len(c)) for ll, c in zip(lls, choices, strict=True)]
        pick = max(range(len(scores)), key=scores.__getitem__)
        gold = None
        try:
            gold = choices[int(str(target))].strip()
        except (ValueError, IndexError):
            gold = str(target) if target is not None else None
        return gold, choices[pick].strip()
    response = resps[0] if isinstance(resps, list) and resps else resps
    if isinstance(response, list):
        response = response[0] if response else None
    return (None if target is None else str(target)), (None if response is None else str(response))


def _cluster(doc: Any, task: str, group: str | None, clusters: dict[str, str]) -> str | None:
    if not isinstance(doc, dict):
        return None
    named = clusters.get(task) or (clusters.get(group) if group else None)
    if named is not None:
        if named.lower() in ("none", "off", ""):
            return None
        if named not in doc:
            raise PosttrainError(f"--cluster {task}={named}: the documents of {task} have no field {named!r}",
                                 remedy=f"pick one of: {', '.join(sorted(doc))}")
        return str(doc[named])
    for fld in DEFAULT_CLUSTER_FIELDS:
        if fld in doc and doc[fld] is not None:
            return str(doc[fld])
    return None


def load_lm_eval_folder(root: Path, clusters: dict[str, str] | None = None) -> tuple[str, list[ItemResult]]:
    """Items of the newest lm-eval run under `root` (an `--output_path` folder, or its model subfolder)."""
    clusters = clusters or {}
    folder, date = _pick_run_folder(root)
    results: dict = {}
    if date is not None:
        results = _read_results(folder / f"results_{date}.json")
    groups = _group_of(results)
    label = str(results.get("model_name") or folder.name)
    if label.startswith(("/", ".", "~")):  # a local checkpoint path: its folder name reads better
        label = Path(label).name or label
    items: list[ItemResult] = []
    for task, path in sorted(_latest_samples(folder, date).items()):
        group = groups.get(task)
        config = _mapping(_mapping(results, "configs"), task)
        delimiter = str(config.get("target_delimiter", " "))
        for where, sample in _sample_lines(path):
            items += _sample_items(sample, where, task, group, delimiter, clusters)
    return label, items


def _sample_lines(path: Path):
    """(`path:line`, the JSON object) for each non-empty line of a samples_*.jsonl file."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            where = f"{path}:{line_no}"
            if not raw.strip():
                continue
            try:
                sample = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise PosttrainError(f"{where} is not JSON ({getattr(e, 'msg', e.__class__.__name__)})",
                                     remedy=_RERUN) from None
            if not isinstance(sample, dict):
                raise PosttrainError(f"{where} is a JSON {type(sample).__name__}, not an lm-eval sample object",
                                     remedy=_RERUN)
            yield where, sample


def _sample_items(s: dict, where: str, task: str, group: str | None, delimiter: str,
                  clusters: dict[str, str]) -> list[ItemResult]:
    """The per-metric items of one lm-eval sample line (metrics without a finite number are skipped:
    non-mean metrics such as bleu's tuples have no per-item score to pair)."""
    records = sample_items(s, where, task=task, group=group, question=_question(s),
                           answers=lambda metric: _render_answers(s, metric, delimiter),
                           cluster=_cluster(s.get("doc"), task, group, clusters))
    return [item for r in records if (item := r.result()) is not None and math.isfinite(item.value)]


# ---------------------------------------------------------------- store


def items_for_evals(store: Store, eval_ids: list[int]) -> tuple[str, list[ItemResult]]:
    """(label, items) of stored evaluations: what the pipeline's compare step hands on, by id."""
    models = store.evals.models(eval_ids)
    missing = set(eval_ids) - set(models)
    if missing:
        raise PosttrainError(f"no evaluation with id {', '.join(map(str, sorted(missing)))} in {store.path}",
                             remedy="list evaluations with `posttrain status`, or check --home")
    return " + ".join(sorted(set(models.values()))), store.evals.items(eval_ids)


def _load_run(store: Store, run_id: str, label: str) -> tuple[str, list[ItemResult]]:
    ids = store.run_evals.ids(run_id, label)
    if not ids:
        hint = ", ".join(f"{lbl} ({role})" for role, lbl in store.run_evals.labels(run_id)) or "none"
        raise PosttrainError(f"run {run_id} has no evaluations labelled {label!r} (it has: {hint})",
                             remedy="use run:RUN_ID:LABEL with one of the labels listed")
    _, items = items_for_evals(store, ids)
    return label, items


def load_items(source: str | Path, *, store: Store | None = None,
               clusters: dict[str, str] | None = None) -> tuple[str, list[ItemResult]]:
    """(label, items) from an lm-eval output folder, `eval:ID[,ID…]` or `run:RUN_ID:LABEL`.

    `clusters` (task or group → doc field) applies to lm-eval folders; store items carry the
    cluster the evaluate stage recorded.
    """
    text = str(source)
    if text.startswith(("eval:", "run:")) and not Path(text).exists():
        if store is None:
            raise PosttrainError(f"{text} refers to the posttrain store, but no store was given",
                                 remedy="pass --home DIR (the folder holding posttrain.db)")
        kind, _, rest = text.partition(":")
        if kind == "eval":
            try:
                ids = [int(x) for x in rest.split(",") if x.strip()]
            except ValueError:
                ids = []
            if not ids:
                raise PosttrainError(f"bad evaluation reference {text!r}", remedy="write eval:ID or eval:ID,ID")
            label, items = items_for_evals(store, ids)
        else:
            run_id, _, label = rest.partition(":")
            if not run_id or not label:
                raise PosttrainError(f"bad run reference {text!r}", remedy="write run:RUN_ID:LABEL")
            label, items = _load_run(store, run_id, label)
        if not items:
            raise PosttrainError(f"{text} has no per-item results in {store.path}",
                                 remedy="re-run the evaluation; items are stored by the evaluate stage")
        return label, items
    path = Path(text).expanduser()
    if path.is_file() and _RESULTS_RE.match(path.name):  # pointed at lm-eval's results_*.json
        path = path.parent
    if not path.is_dir():
        raise PosttrainError(f"{text} is neither an lm-eval output folder nor a store reference",
                             remedy="pass an lm-eval --output_path folder, eval:ID or run:RUN_ID:LABEL")
    label, items = load_lm_eval_folder(path, clusters)
    if not items:
        raise PosttrainError(f"{path} holds no per-item scores with a numeric metric",
                             remedy="run lm-eval with --log_samples on tasks with per-item metrics (acc, exact_match)")
    return label, items


# ---------------------------------------------------------------- task settings (n-shot, version)


def task_settings(source: str | Path, *, store: Store | None = None) -> dict[str, dict]:
    """Task → {"version", "n_shot"} as the source recorded them; items alone cannot show a
    different number of shots (doc_hash covers the document, not the prompt)."""
    text = str(source)
    out: dict[str, dict] = {}
    if text.startswith(("eval:", "run:")) and not Path(text).exists():
        if store is None:
            return out
        kind, _, rest = text.partition(":")
        if kind == "eval":
            ids = [int(x) for x in rest.split(",") if x.strip().isdigit()]
        else:
            run_id, _, label = rest.partition(":")
            ids = store.run_evals.ids(run_id, label)
        return store.evals.settings(ids) if ids else out
    folder, date = _pick_run_folder(Path(text).expanduser())
    if date is None:
        return out
    results = _read_results(folder / f"results_{date}.json")
    versions, shots = _mapping(results, "versions"), _mapping(results, "n-shot")
    for task in versions.keys() | shots.keys():
        out[task] = {"version": versions.get(task), "n_shot": shots.get(task)}
    return out


def check_same_settings(new: dict[str, dict], baseline: dict[str, dict], new_label: str, baseline_label: str) -> None:
    """Refuse to compare a task evaluated with a different number of shots or task version."""
    for task in sorted(new.keys() & baseline.keys()):
        for what, remedy in (("n_shot", "the same --num_fewshot"), ("version", "the same task version")):
            a, b = new[task].get(what), baseline[task].get(what)
            if a is not None and b is not None and str(a) != str(b):
                words = "shots" if what == "n_shot" else "task version"
                raise PosttrainError(
                    f"{task} was evaluated with {words} {a} for {new_label} but {b} for {baseline_label}; "
                    "paired items would compare different prompts",
                    remedy=f"evaluate both with {remedy}")
