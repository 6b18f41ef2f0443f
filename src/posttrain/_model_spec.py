"""What a user types as a model, read in one place: `ollama:NAME`, a GGUF file, a Hugging Face
checkpoint folder, or something that is none of these, told apart so that each caller can refuse
it in its own words.

`evaluate.resolve_model` (what to load), the pipeline's `Baseline` (what to convert or evaluate) and
`posttrain eval` (where its outputs go) read it here. A compare source (`eval:ID`,
`run:RUN_ID:LABEL`, an lm-eval output folder) names results, not a model: compare reads that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from posttrain.paths import safe_name

OLLAMA_PREFIX = "ollama:"

# gguf: a file named *.gguf; file: another file (evaluate reads its first bytes, the baseline
# refuses it); checkpoint: a folder with config.json; directory: a folder without one.
ModelKind = Literal["ollama", "gguf", "file", "checkpoint", "directory", "missing"]


@dataclass(frozen=True)
class ModelSpec:
    text: str  # as the user typed it
    kind: ModelKind
    path: Path | None = None  # `text` with `~` expanded; None for an Ollama model
    ollama_name: str | None = None  # NAME of `ollama:NAME`

    @classmethod
    def parse(cls, text: str | Path) -> ModelSpec:
        """What `text` names as the file system has it now."""
        text = str(text)
        if text.startswith(OLLAMA_PREFIX):
            return cls(text, "ollama", ollama_name=text.removeprefix(OLLAMA_PREFIX))
        path = Path(text).expanduser()
        kind: ModelKind
        if path.is_file():
            kind = "gguf" if path.suffix == ".gguf" else "file"
        elif path.is_dir():
            kind = "checkpoint" if (path / "config.json").is_file() else "directory"
        else:
            kind = "missing"
        return cls(text, kind, path)

    @property
    def label(self) -> str:
        """A folder name for this model's outputs: the Ollama name (a tag's `:` as `_`), else the
        last part of the text without its suffix, made one safe path component."""
        raw = self.ollama_name.replace(":", "_") if self.ollama_name is not None else Path(self.text).stem
        return safe_name(raw)
