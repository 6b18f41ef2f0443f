"""The checkpoints of one training-run folder as the store holds them: for each, the newest run
with the series' settings, and that run's per-item results for the series' quant."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from posttrain.compare import ItemResult, items_for_evals
from posttrain.contracts import step_outputs
from posttrain.errors import PosttrainError
from posttrain.series._model import Pending
from posttrain.series._steps import checkpoint_step, training_order
from posttrain.store import Store, dumps, loads

log = logging.getLogger("posttrain.series")

# Settings a run records that say where it ran, not what it measured: runs that differ only in
# these evaluated the same items the same way and belong to one series.
_WHERE = ("checkpoint", "ollama_url")


@dataclass
class Member:
    """One checkpoint with the items it scored."""

    label: str
    path: Path
    step: int | None
    run_id: str
    eval_label: str
    items: list[ItemResult]


@dataclass
class Gathered:
    members: list[Member]  # in training order, the final model last
    pending: list[Pending]
    quant: str


def _settings_key(run: dict) -> str:
    settings = loads(run.get("config_json")) or {}
    return dumps({k: v for k, v in settings.items() if k not in _WHERE}) if isinstance(settings, dict) else ""


def _evaluated(store: Store, run_id: str) -> tuple[str, dict[str, tuple[int, ...]]]:
    """(status of the run's evaluate step, its label → eval ids when done)."""
    for step in store.steps.of_run(run_id):
        if step["name"] == "evaluate":
            out = step_outputs("evaluate", step.get("outputs_json")) if step["status"] == "done" else None
            return step["status"], out.evals if out else {}
    return "missing", {}


def gather(store: Store, folder: Path, quant: str | None = None) -> Gathered:
    """The series of `folder` (the training run's output folder holding checkpoint-N/ and final_model/).

    Only runs with the settings of the newest run in the folder count: a series mixes no item sets.
    `quant`: which variant stands for each checkpoint (default: the first quant of those settings)."""
    folder = Path(folder).expanduser().resolve()
    runs = [r for r in store.runs.newest_first() if Path(r["checkpoint"]).parent == folder]
    if not runs:
        raise PosttrainError(f"no run in {store.path} evaluated a checkpoint in {folder}",
                             remedy="run `posttrain watch FOLDER --series --once` (or `posttrain run` on each "
                                    "checkpoint) with the same --home first")
    key = _settings_key(runs[0])
    settings = loads(runs[0].get("config_json")) or {}
    given = quant is not None
    quant = (quant or (settings.get("quants") or ["f16"])[0]).lower()
    # "f16" in a run's settings stands for its reference, which is BF16 where the run chose it
    # (convert/_reference.py): unless the user named the type, either stands for the checkpoint.
    suffixes = [f"-{quant}", "-bf16"] if quant == "f16" and not given else [f"-{quant}"]
    others = {r["checkpoint"] for r in runs if _settings_key(r) != key}
    if others:
        log.info("series of %s: %d checkpoint(s) have runs with other settings; only the newest settings count",
                 folder, len(others))
    members: list[Member] = []
    pending: list[Pending] = []
    seen: set[str] = set()
    for run in runs:  # newest first: the first run of a checkpoint is the one that counts
        path = Path(run["checkpoint"])
        if run["checkpoint"] in seen or _settings_key(run) != key:
            continue
        status, evals = _evaluated(store, run["id"])
        label = next((lbl for suffix in suffixes for lbl in sorted(evals) if lbl.lower().endswith(suffix)), None)
        if label is None:
            seen.add(run["checkpoint"])
            why = (f"run {run['id']} has no {quant} evaluation" if status == "done"
                   else f"run {run['id']}: evaluate is {status}")
            pending.append(Pending(label=path.name, path=str(path), reason=why))
            continue
        seen.add(run["checkpoint"])
        _, items = items_for_evals(store, [int(i) for i in evals[label]])
        members.append(Member(path.name, path, checkpoint_step(path), run["id"], label, items))
    members.sort(key=lambda m: training_order(m.path, m.step))
    return Gathered(members, pending, quant)
