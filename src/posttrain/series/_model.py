"""The series document (schema `posttrain.series/1`): typed records, written as series.json and
read back by `read_series`. Every number is a finite float or None, never NaN."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SERIES_SCHEMA = "posttrain.series/1"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Score(_Record):
    """One checkpoint's mean on one (task, filter, metric), with its (1−α) interval (posttrain._ci)."""

    task: str
    metric: str
    filter: str = "none"
    mean: float | None
    ci: list[float | None] | None = None
    n: int


class Point(_Record):
    """One evaluated checkpoint of the training run, in training order."""

    label: str  # the folder's name: checkpoint-500, final_model
    path: str
    step: int | None  # from checkpoint-N, else trainer_state.json's global_step; None when neither says
    run_id: str
    eval_label: str  # the run's evaluation it stands for (the series' quant), e.g. exp1-checkpoint-500-F16
    scores: list[Score]


class Pairing(_Record):
    """`label` against `versus` on the same items: the previous checkpoint or the final one.
    `diff` is label − versus; `p_adjusted` is Holm over every pairing of the series."""

    kind: Literal["previous", "final"]
    label: str
    versus: str
    task: str
    metric: str
    filter: str = "none"
    n: int
    diff: float | None
    ci: list[float | None] | None = None
    test: str | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    verdict: str
    sentence: str


class Best(_Record):
    """The checkpoint with the highest mean over tasks of each task's main metric, and how sure that is."""

    label: str
    step: int | None
    versus: str | None  # the checkpoint its paired p-values are against (the final, or the runner-up)
    p_adjusted: dict[str, float | None] = Field(default_factory=dict)  # task → Holm p vs `versus`
    sentence: str


class Pending(_Record):
    """A checkpoint of the folder the series cannot show yet, and why."""

    label: str
    path: str
    reason: str


class SeriesDoc(_Record):
    schema_id: str = Field(SERIES_SCHEMA, alias="schema")
    created_at: str
    folder: str
    quant: str
    alpha: float
    final: str | None  # the point every "final" pairing is against: final_model, else the latest checkpoint
    points: list[Point]
    pairings: list[Pairing]
    best: Best | None
    pending: list[Pending] = Field(default_factory=list)
