"""The baseline a run is compared with: an Ollama model (`ollama:NAME`), a GGUF file, or a Hugging
Face checkpoint directory (converted to F16 once, cached by content). What the text names is read
by `posttrain._model_spec`, as `posttrain eval` reads a model; what a baseline may be, and how a
wrong one is refused, is decided here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from posttrain._model_spec import ModelSpec
from posttrain.errors import PosttrainError

log = logging.getLogger("posttrain.pipeline")

_REMEDY = "give a Hugging Face directory, a .gguf file or ollama:NAME"


@dataclass(frozen=True)
class Baseline:
    spec: ModelSpec

    @classmethod
    def parse(cls, text: str) -> Baseline:
        return cls(ModelSpec.parse(text))

    @property
    def text(self) -> str:
        """As the user gave it."""
        return self.spec.text

    @property
    def path(self) -> Path | None:
        """None for an Ollama model."""
        return self.spec.path

    @property
    def is_ollama(self) -> bool:
        return self.spec.kind == "ollama"

    @property
    def is_gguf(self) -> bool:
        return self.spec.kind == "gguf"

    @property
    def is_checkpoint(self) -> bool:
        # A folder without config.json too: `check` refuses it up front, and one that appeared
        # after the check goes to convert, which refuses it in its own words.
        return self.spec.kind in ("checkpoint", "directory")

    def check(self, *, may_appear: bool = False) -> None:
        """Refuse now, before any work, a baseline that cannot be used. A watcher may start before its
        baseline exists (the demo saves it while the watcher runs): `may_appear` only warns then."""
        kind = self.spec.kind
        if kind == "missing":
            if may_appear:
                log.warning("baseline %s does not exist yet: runs fail at their baseline step until it does",
                            self.text)
                return
            raise self.not_found()
        if kind == "file":
            raise PosttrainError(f"baseline {self.text!r} is a file but not a .gguf", remedy=_REMEDY)
        if kind == "directory":
            raise PosttrainError(f"baseline {self.text!r} is a directory without config.json",
                                 remedy="give a Hugging Face checkpoint directory, a .gguf file or ollama:NAME")

    def absolute(self) -> str:
        """The same baseline with its path made absolute (a detached watcher runs elsewhere)."""
        return str(self.path.resolve()) if self.path is not None and self.spec.kind != "missing" else self.text

    def not_found(self) -> PosttrainError:
        return PosttrainError(f"baseline {self.text!r} not found", remedy=_REMEDY)
