"""What a report is made of: typed, validated inputs (pydantic) and the derived views the templates use.

The inputs are plain dicts at the public boundary (the pipeline builds them from the store); they are
validated here once so the templates and plots can trust their shape. Unknown keys are kept
(`extra="allow"`) so a newer producer does not break an older report.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

from posttrain._thinking import strip_think
from posttrain.contracts import COMPARE_SCHEMA, REPORT_SCHEMA  # noqa: F401  (re-exported)
from posttrain.errors import PosttrainError
from posttrain.paths import model_label, safe_name

VERDICTS = ("better", "worse", "no significant difference")


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class RunInfo(_Loose):
    """`runs` row: what was evaluated and when."""

    id: str
    checkpoint: str | None = None
    model_name: str | None = None
    baseline: str | None = None
    created_at: str | None = None
    finished_at: str | None = None
    status: str | None = None

    @computed_field  # in report.json too, so every reader shows the same name
    @property
    def display_name(self) -> str:
        return display_name(self.model_name, self.checkpoint) or self.id


def display_name(model_name: str | None, checkpoint: str | None) -> str | None:
    """The model's name as its owner wrote it (`モデル`), when the stored name is the safe form of the
    checkpoint folder's name (`model-94591749`, for files and Ollama); otherwise the stored name."""
    label = model_label(checkpoint) if checkpoint else ""
    if label and (model_name is None or safe_name(label) == model_name):
        return label
    return model_name


class VariantInfo(_Loose):
    """One GGUF file from the convert manifest. `kld_vs_f16` / `top1_vs_f16` are null for F16 itself
    or when the quality check was not run."""

    quant: str
    path: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    kld_vs_f16: float | None = None
    top1_vs_f16: float | None = None


class EvalInfo(_Loose):
    """One aggregate score: `label` (a run_evals label such as "tiny-Q4_K_M" or "base-F16"), the task
    (group name when the task is reported as a group), metric, filter, value, 95% CI, n items."""

    label: str
    task: str
    metric: str
    filter: str = "none"
    value: float | None = None
    ci: tuple[float, float] | None = None
    n: int | None = None
    task_hash: str | None = None
    seconds: float | None = None
    role: str | None = None  # "candidate" or "baseline"
    quant: str | None = None  # the variant this score belongs to, when known

    @field_validator("ci", mode="before")
    @classmethod
    def _ci_pair(cls, v: Any) -> Any:
        if v is None or (isinstance(v, (list, tuple)) and any(x is None for x in v)):
            return None
        return v


class StepInfo(_Loose):
    name: str
    status: str | None = None
    wall_s: float | None = None
    peak_rss_bytes: int | None = None
    error: str | None = None


class FailureInfo(_Loose):
    step: str
    error: str | None = None


class TrackingInfo(_Loose):
    """What one experiment tracker did with the run (posttrain.track): where it is, or why not."""

    tracker: str
    ok: bool = False
    run: str | None = None
    where: str | None = None
    note: str | None = None
    error: str | None = None


class ReferenceInfo(_Loose):
    """Which 16-bit GGUF the run evaluated as the model itself, and why (convert/_reference.py)."""

    quant: str
    reason: str
    checkpoint_dtype: str | None = None
    agreement: float | None = None
    speedup: float | None = None


class ReportInput(BaseModel):
    """Everything `write_report` renders. `compare` is the `posttrain.compare/1` document, kept as a
    dict so report.json can embed it byte-for-byte equal in content."""

    compare: dict[str, Any]
    run: RunInfo
    variants: list[VariantInfo] = Field(default_factory=list)
    evals: list[EvalInfo] = Field(default_factory=list)
    steps: list[StepInfo] = Field(default_factory=list)
    environment: dict[str, Any] = Field(default_factory=dict)
    failures: list[FailureInfo] = Field(default_factory=list)
    tracking: list[TrackingInfo] = Field(default_factory=list)
    # The LoRA section (report/_adapter.py) when the checkpoint was an adapter; None otherwise.
    adapter: dict[str, Any] | None = None
    # The reference the convert step chose (None for a run made before the choice existed: F16).
    reference: ReferenceInfo | None = None
    # The ship document (posttrain.ship/1) when the run measured a quant ladder, else {}.
    ship: dict[str, Any] = Field(default_factory=dict)

    @field_validator("compare")
    @classmethod
    def _compare_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        # An empty dict means "no comparison was made" (e.g. the run failed before compare).
        if v and v.get("schema") != COMPARE_SCHEMA:
            raise PosttrainError(
                f"compare document has schema {v.get('schema')!r}, expected {COMPARE_SCHEMA!r}",
                remedy="re-run `posttrain compare` with this posttrain version",
            )
        return v


# ---------------------------------------------------------------------------------------------------
# Thinking text: evaluate strips it before storing, but a report must never show it even when a
# producer forgot. We cut it out here and show only its hash.

def strip_thinking(text: str | None) -> tuple[str | None, str | None]:
    """(visible text, sha256 of the removed thinking or None), by evaluate's own rules (posttrain._thinking)."""
    if text is None:
        return None, None
    visible, digest = strip_think(text)
    return (visible.strip(), digest) if digest else (text, None)


def finite(x: Any) -> float | None:
    """A float or None: the report never shows NaN/inf."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
