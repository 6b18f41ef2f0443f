"""The baseline a run is compared with, parsed in one place: an Ollama model (`ollama:NAME`), a GGUF
file, or a Hugging Face checkpoint directory (converted to F16 once, cached by content)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import PosttrainError

log = logging.getLogger("posttrain.pipeline")

OLLAMA_PREFIX = "ollama:"
_REMEDY = "give a Hugging Face directory, a .gguf file or ollama:NAME"


@dataclass(frozen=True)
class Baseline:
    text: str  # as the user gave it
    path: Path | None  # None for an Ollama model

    @classmethod
    def parse(cls, text: str) -> Baseline:
        if text.startswith(OLLAMA_PREFIX):
            return cls(text, None)
        return cls(text, Path(text).expanduser())

    @property
    def is_ollama(self) -> bool:
        return self.path is None

    @property
    def is_gguf(self) -> bool:
        return self.path is not None and self.path.is_file() and self.path.suffix == ".gguf"

    @property
    def is_checkpoint(self) -> bool:
        return self.path is not None and self.path.is_dir()

    def check(self, *, may_appear: bool = False) -> None:
        """Refuse now, before any work, a baseline that cannot be used. A watcher may start before its
        baseline exists (the demo saves it while the watcher runs): `may_appear` only warns then."""
        if self.path is None:
            return
        if not self.path.exists():
            if may_appear:
                log.warning("baseline %s does not exist yet: runs fail at their baseline step until it does",
                            self.text)
                return
            raise PosttrainError(f"baseline {self.text!r} not found", remedy=_REMEDY)
        if self.path.is_file() and self.path.suffix != ".gguf":
            raise PosttrainError(f"baseline {self.text!r} is a file but not a .gguf", remedy=_REMEDY)
        if self.path.is_dir() and not (self.path / "config.json").is_file():
            raise PosttrainError(f"baseline {self.text!r} is a directory without config.json",
                                 remedy="give a Hugging Face checkpoint directory, a .gguf file or ollama:NAME")

    def absolute(self) -> str:
        """The same baseline with its path made absolute (a detached watcher runs elsewhere)."""
        return str(self.path.resolve()) if self.path is not None and self.path.exists() else self.text

    def not_found(self) -> PosttrainError:
        return PosttrainError(f"baseline {self.text!r} not found", remedy=_REMEDY)
