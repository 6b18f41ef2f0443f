"""What crosses a stage boundary, defined once: the GGUF variant and the convert manifest, the per-item
record, each pipeline step's outputs, the documents' schema names, and where every file of a run
lives. Writers and readers import these names instead of repeating strings or reshaping dicts.

Who writes and who reads each one is in docs/ARCHITECTURE.md.

Plain frozen dataclasses, so importing this module costs nothing; pydantic, which turns a step's
outputs into the JSON the store keeps and back (checking every field), is imported only by
`encode_outputs` / `decode_outputs`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Documents and their schema versions. A reader refuses a schema it does not know (no guessing).
COMPARE_SCHEMA = "posttrain.compare/1"  # compare → report, notify, status
MANIFEST_SCHEMA = "posttrain.convert/1"  # convert → register, report
REPORT_SCHEMA = "posttrain.report/1"  # report → users, the runs index
SHIP_SCHEMA = "posttrain.ship/1"  # ship → report


@dataclass(frozen=True)
class Variant:
    """One GGUF file that convert made and verified (or that a user named): what register, serve and
    evaluate are handed. convert's own record of how it was made (timings, checks) stays in convert."""

    path: Path
    quant: str  # upper case, llama.cpp's spelling: F16, Q8_0, Q4_K_M
    sha256: str  # hex, no prefix
    model_name: str
    size_bytes: int | None = None
    checkpoint: Path | None = None  # the HF checkpoint it came from (its chat template), when known
    # A GGUF LoRA applied on top of `path` (llama.cpp at run time, Ollama's ADAPTER), with its sha256.
    adapter: Path | None = None
    adapter_sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    """`manifest.json` of a convert output folder (schema `MANIFEST_SCHEMA`), as its one reader,
    `posttrain.convert.read_manifest`, returns it."""

    path: Path
    model_name: str
    checkpoint: Path | None
    checkpoint_sha256: str | None
    variants: tuple[Variant, ...]


@dataclass(frozen=True)
class ItemResult:
    """One item's score for one (leaf task, filter, metric), with enough context to show it to a person.

    evaluate writes these to the store (`items`); compare pairs them on (task, doc_hash, filter, metric).
    """

    task: str
    group: str | None
    doc_id: int
    doc_hash: str
    filter: str
    metric: str
    value: float
    cluster: str | None = None
    question: str | None = None
    target: str | None = None
    response: str | None = None


@dataclass(frozen=True)
class ItemRecord:
    """One item as evaluate stores it (a row of `items`; `store.evals.save` takes these): ItemResult's
    fields and what only the store keeps. Made from an lm-eval sample by `posttrain._lm_eval_items`.

    `value` is None when lm-eval logged no number for the metric: the row is stored all the same (the
    store says what ran), and `result()` leaves it out, since nothing can be paired on it.
    """

    task: str
    group: str | None
    doc_id: int
    doc_hash: str | None  # None when lm-eval logged none; `result()` pairs on the doc id then
    filter: str
    metric: str
    value: float | None
    cluster: str | None = None
    question: str | None = None
    target: str | None = None
    response: str | None = None
    choice_ll: tuple[float, ...] | None = None  # multiple choice: each option's log-likelihood, in order
    think_sha256: str | None = None  # the reasoning cut out of the response: only its hash is kept

    def result(self) -> ItemResult | None:
        """The item as compare pairs it, or None when it has no value."""
        if self.value is None:
            return None
        return ItemResult(task=self.task, group=self.group, doc_id=self.doc_id,
                          doc_hash=self.doc_hash or f"doc_id:{self.doc_id}", filter=self.filter,
                          metric=self.metric, value=self.value, cluster=self.cluster, question=self.question,
                          target=self.target, response=self.response)


@dataclass(frozen=True)
class RunLayout:
    """Every file of one pipeline run, under `<home>/runs/<run_id>/`."""

    root: Path

    @property
    def compare_json(self) -> Path:
        return self.root / "compare.json"

    @property
    def ship_json(self) -> Path:
        """The ship step's document (schema posttrain.ship/1), when the run has `ship = true`."""
        return self.root / "ship.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def track_json(self) -> Path:
        """What the experiment trackers did with the run (posttrain.track): read by report and notify."""
        return self.root / "track.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def step_log(self, step: str) -> Path:
        """The output of a step that ran in a child process (llama.cpp's own lines included)."""
        return self.logs / f"{step}.log"

    @property
    def step_jobs(self) -> Path:
        """Hand-over files between the runner and a step's child process."""
        return self.root / ".steps"

    def evals(self, label: str) -> Path:
        """lm-eval's results and samples for one evaluated model."""
        return self.root / "evals" / label

    @property
    def lock(self) -> Path:
        """Held by the process driving the run; the kernel drops it when that process dies."""
        return self.root / ".lock"


# -- each pipeline step's outputs -------------------------------------------------------------------
# The runner stores them as JSON (`encode_outputs`) and hands them to the steps that depend on them
# as these types again (`decode_outputs`); a recorded row that no longer decodes is recomputed.
@dataclass(frozen=True)
class AdapterFacts:
    """The detect step's record of a LoRA adapter: its base, how it can be built, whether a QLoRA."""

    base: str
    base_ref: str | None = None
    peft_type: str | None = None
    rank: int | None = None
    lora_alpha: float | None = None
    target_modules: tuple[str, ...] = ()
    qlora: bool = False
    routes: tuple[str, ...] = ()
    route_note: str = ""


@dataclass(frozen=True)
class DetectOut:
    checkpoint: Path
    sha256: str
    total_bytes: int
    architecture: str | None = None
    model_type: str | None = None
    model_name: str | None = None
    adapter: AdapterFacts | None = None


@dataclass(frozen=True)
class AdapterRoute:
    """A GGUF LoRA beside its base's GGUF (llama.cpp applies it at run time; Ollama's ADAPTER)."""

    base_gguf: Path
    base_sha256: str
    lora: Path
    lora_sha256: str
    size_bytes: int
    base_4bit_gguf: Path | None = None  # a QLoRA's base at 4 bits: the condition it was trained in
    base_type: str = "F16"  # the base GGUF's type: the base's reference (BF16 for a bfloat16 base where faster)

    @property
    def label(self) -> str:
        """The route's evaluation label after the model's name: the base's type + LoRA ("F16+LoRA")."""
        return f"{self.base_type}+LoRA"

    def intact(self) -> bool:
        files = [self.base_gguf, self.lora, *([self.base_4bit_gguf] if self.base_4bit_gguf else [])]
        return all(f.is_file() for f in files) and self.lora.stat().st_size == self.size_bytes


@dataclass(frozen=True)
class AdapterRoutes:
    """How an adapter checkpoint was built: merged into its base, and as a GGUF LoRA when possible."""

    merged: Path
    adapter: AdapterRoute | None = None
    adapter_note: str = ""  # why there is no GGUF LoRA


@dataclass(frozen=True)
class ReferenceChoice:
    """Which 16-bit GGUF a run evaluates as the model itself (F16 or BF16), and why, in a sentence the
    report prints. `agreement`: BF16's top-1 agreement with F16 on convert's probe text, where measured;
    `speedup`: BF16's probe throughput over F16's on this CPU, where the machine profile has both."""

    quant: str
    reason: str
    checkpoint_dtype: str | None = None
    agreement: float | None = None
    speedup: float | None = None


@dataclass(frozen=True)
class ConvertOut:
    model_name: str
    manifest: Path
    variants: tuple[Variant, ...]
    routes: AdapterRoutes | None = None
    reference: ReferenceChoice | None = None  # None in a run made before the choice existed: F16

    def intact(self) -> bool:
        """Every variant is still there at its size, and the adapter route's files too."""
        return bool(self.variants) and all(v.path.is_file() and v.path.stat().st_size == v.size_bytes
                                           for v in self.variants) and \
            (self.routes is None or self.routes.adapter is None or self.routes.adapter.intact())

    @property
    def adapter(self) -> AdapterRoute | None:
        return self.routes.adapter if self.routes else None


@dataclass(frozen=True)
class Registration:
    name: str
    quant: str
    status: str  # "created", "unchanged", "skipped: <why>", "failed: <why>"
    template: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegisterOut:
    registrations: tuple[Registration, ...]


@dataclass(frozen=True)
class BaselineOut:
    model: str  # a GGUF path or ollama:NAME: what evaluate is given
    source: str  # what the user named
    sha256: str | None = None  # of the GGUF (none for Ollama)


@dataclass(frozen=True)
class EvalOut:
    evals: dict[str, tuple[int, ...]]  # label → the store's eval ids (one per task)
    sources: dict[str, str]  # label → what was evaluated, as a person reads it


@dataclass(frozen=True)
class DocumentOut:
    """A document a step wrote, with its hash when the step finished (reused only while it matches)."""

    path: Path
    sha256: str


@dataclass(frozen=True)
class ShipOut:
    path: Path
    sentence: str
    pick: str | None = None
    strength: str | None = None  # shown | indicated | none


@dataclass(frozen=True)
class ReportOut:
    html: Path
    md: Path
    json: Path

    def intact(self) -> bool:
        return self.html.is_file() and self.md.is_file() and self.json.is_file()


@dataclass(frozen=True)
class TrackerOutcome:
    tracker: str
    ok: bool
    run: str | None = None
    where: str | None = None
    note: str | None = None
    error: str | None = None
    attempts: int = 0
    seconds: float | None = None


@dataclass(frozen=True)
class TrackOut:
    trackers: tuple[TrackerOutcome, ...]
    report: Path
    report_sha256: str | None = None  # None: the run had no report to send


@dataclass(frozen=True)
class NotifyOutcome:
    channel: str
    target: str | None = None
    ok: bool = False
    skipped: bool = False
    detail: str | None = None


@dataclass(frozen=True)
class NotifyOut:
    outcomes: tuple[NotifyOutcome, ...] = field(default_factory=tuple)


# The pipeline's steps and what each hands on: readers of the store's step rows (report, track,
# series) decode a row by its step's name.
STEP_OUTPUTS: dict[str, type] = {
    "detect": DetectOut, "convert": ConvertOut, "register": RegisterOut, "baseline": BaselineOut,
    "evaluate": EvalOut, "evaluate_baseline": EvalOut, "compare": DocumentOut, "ship": ShipOut,
    "report": ReportOut, "track": TrackOut, "notify": NotifyOut,
}


@functools.cache
def _adapter(kind: Any):
    from pydantic import TypeAdapter  # here: only code that stores or reads outputs pays for pydantic

    return TypeAdapter(kind)  # built once per type: building one costs milliseconds


def encode_outputs(outputs: Any) -> Any:
    """A step's outputs as the JSON value the store keeps (paths as strings, tuples as lists)."""
    return _adapter(type(outputs)).dump_python(outputs, mode="json")


def decode_outputs(kind: Any, value: Any) -> Any:
    """`value` (JSON, as `encode_outputs` wrote it) as `kind` again; pydantic's ValidationError if a
    field is missing or of the wrong type (an older row's outputs: the step runs again)."""
    return _adapter(kind).validate_python(value)


def step_outputs(name: str, outputs_json: str | None) -> Any | None:
    """What the store's row of pipeline step `name` holds, typed; None when it holds nothing usable."""
    import json

    if not outputs_json or name not in STEP_OUTPUTS:
        return None
    try:
        return decode_outputs(STEP_OUTPUTS[name], json.loads(outputs_json))
    except ValueError:  # pydantic's ValidationError and json's JSONDecodeError are ValueErrors
        return None
