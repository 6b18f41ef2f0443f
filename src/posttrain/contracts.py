"""What crosses a stage boundary, defined once: the GGUF variant and the convert manifest, the per-item
record, the documents' schema names, and where every file of a run lives. Writers and readers import these names instead of repeating strings.

Who writes and who reads each one is in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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

    def to_json(self) -> dict:
        """As a step's outputs hold it (the runner stores outputs as JSON)."""
        return {"path": str(self.path), "quant": self.quant, "sha256": self.sha256, "model_name": self.model_name,
                "size_bytes": self.size_bytes, "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "adapter": str(self.adapter) if self.adapter else None, "adapter_sha256": self.adapter_sha256}

    @classmethod
    def from_json(cls, d: dict) -> Variant:
        def path(key: str) -> Path | None:
            return Path(d[key]) if d.get(key) else None

        return cls(path=Path(d["path"]), quant=d["quant"], sha256=d["sha256"], model_name=d["model_name"],
                   size_bytes=d.get("size_bytes"), checkpoint=path("checkpoint"), adapter=path("adapter"),
                   adapter_sha256=d.get("adapter_sha256"))


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
