"""Where a checkpoint stands in its training run: the step number and the series' order.

transformers' Trainer saves `checkpoint-<global_step>/` and, usually, `final_model/` (or any folder
`trainer.save_model()` is given) at the end. The folder name is the first witness of the step; a
folder without one may carry `trainer_state.json` (written by `Trainer._save_checkpoint`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_intermediate(path: Path) -> bool:
    """A `checkpoint-N` folder, saved during training (everything else counts as a final model)."""
    return _CHECKPOINT.match(Path(path).name) is not None


def checkpoint_step(path: Path) -> int | None:
    """N of `checkpoint-N`, else `global_step` of the folder's trainer_state.json, else None."""
    if m := _CHECKPOINT.match(Path(path).name):
        return int(m.group(1))
    try:
        state = json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    step = state.get("global_step") if isinstance(state, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def training_order(path: Path, step: int | None) -> tuple:
    """Sort key: the checkpoints by step, then the final model(s) last (a final model saved at the
    same step as the last checkpoint still comes after it)."""
    final = not is_intermediate(path)
    return (final, step if step is not None else float("inf"), Path(path).name)
