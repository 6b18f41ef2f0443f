"""What crosses a stage boundary, defined once: the per-item record, the documents' schema names, and
where every file of a run lives. Writers and readers import these names instead of repeating strings.

Who writes and who reads each one is in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Documents and their schema versions. A reader refuses a schema it does not know (no guessing).
COMPARE_SCHEMA = "posttrain.compare/1"  # compare → report, notify, status
MANIFEST_SCHEMA = "posttrain.convert/1"  # convert → register, report
REPORT_SCHEMA = "posttrain.report/1"  # report → users, the runs index


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
