"""Full weights: config, tokenizer and safetensors shards, each checked as the trainer may still be writing it.

A checkpoint counts as complete only when every piece is present, every shard is exactly as long as
its own header says, and (`settled`) nothing changed during a short settle window.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from posttrain._files import human_bytes
from posttrain.checkpoint._read import (
    inside,
    parse_json,
    safetensors_expected_size,
    shown,
)

log = logging.getLogger("posttrain.checkpoint")

CONFIG = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SINGLE_SAFETENSORS = "model.safetensors"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Any one of these sets makes a usable tokenizer for transformers and llama.cpp's converter.
TOKENIZER_SETS = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))
# Files whose content defines the model; their hash names the checkpoint.
_AUX_FILES = ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
              "chat_template.jinja", "added_tokens.json")


@dataclass
class Verdict:
    """The detector's answer. `reason` is one plain sentence when the checkpoint is not complete."""

    path: Path
    complete: bool
    reason: str = ""
    architecture: str | None = None
    model_type: str | None = None
    weight_files: list[Path] = field(default_factory=list)
    tokenizer_files: list[Path] = field(default_factory=list)
    total_bytes: int = 0

    def __bool__(self) -> bool:
        return self.complete

    def content_files(self) -> list[Path]:
        """Every file whose bytes define the model, in a stable order."""
        files = [self.path / CONFIG, *self.tokenizer_files, *self.weight_files]
        files += [self.path / name for name in _AUX_FILES if (self.path / name).is_file()]
        index = self.path / SAFETENSORS_INDEX
        if index.is_file():
            files.append(index)
        return sorted(set(files))

    def content_signature(self) -> tuple[tuple[str, int, int], ...]:
        """Names, sizes and modification times of the content files: equal means unchanged, without
        reading gigabytes again (what a run checks between its steps, and the watcher between scans)."""
        return tuple((f.name, st.st_size, st.st_mtime_ns) for f in self.content_files() for st in (f.stat(),))


def _index_shards(path: Path) -> list[Path] | str:
    """The shard files `model.safetensors.index.json` names, or why they cannot be trusted."""
    doc, error = parse_json((path / SAFETENSORS_INDEX).read_bytes())
    if error:
        return f"{SAFETENSORS_INDEX} does not parse ({error}; still being written?)"
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        return f"{SAFETENSORS_INDEX} has no weight_map (an object from tensor names to shard files)"
    if not all(isinstance(n, str) for n in weight_map.values()):
        return f"{SAFETENSORS_INDEX}: weight_map has a value that is not a file name"
    shards = []
    for name in sorted(set(weight_map.values())):
        if not name.endswith(".safetensors"):
            return f"{SAFETENSORS_INDEX} names {name[:80]!r}, which is not a .safetensors file"
        shard = inside(path, name)
        if shard is None:
            return f"{SAFETENSORS_INDEX} names {name[:80]!r}, which lies outside the checkpoint directory"
        shards.append(shard)
    return shards


def _weights(path: Path, allow_pickle: bool) -> list[Path] | str:
    """The weight files this checkpoint names, or the reason there are none."""
    if (path / SAFETENSORS_INDEX).is_file():
        return _index_shards(path)
    if (path / SINGLE_SAFETENSORS).is_file():
        return [path / SINGLE_SAFETENSORS]
    pickles = [path / name for name in PICKLE_WEIGHTS if (path / name).is_file()]
    if pickles:
        if not allow_pickle:
            return ("only pickle weights (pytorch_model.bin) were found; they can run code when loaded: "
                    "pass --allow-pickle if you trust this checkpoint")
        return [pickles[0]]
    return "no model weights: neither model.safetensors nor model.safetensors.index.json is present"


def _tokenizer_file_loads(path: Path) -> bool:
    if path.suffix == ".json":
        return parse_json(path.read_bytes())[1] is None
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())
        return True
    except (RuntimeError, OSError):
        # Llama 3's original tokenizer.model is tiktoken text, not a SentencePiece proto; it is whole
        # if it ends with a newline, as tiktoken files do.
        data = path.read_bytes()
        return data.endswith(b"\n") and data[:1].isalnum()


def _snapshot(path: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in sorted(path.iterdir()):
        if p.is_file():
            st = p.stat()
            out[p.name] = (st.st_size, st.st_mtime_ns)
    return out


def settled(path: Path, once: Callable[[Path], Verdict], settle_seconds: float) -> Verdict:
    """`once(path)`'s verdict, kept only when no file of `path` changed during `settle_seconds` after a
    complete one; never raises for a bad checkpoint (a file that cannot be read is the verdict's reason)."""
    if not path.is_dir():
        return Verdict(path, False, f"{path} is not a directory")
    try:
        before = _snapshot(path)
        verdict = once(path)
        if not verdict.complete or settle_seconds <= 0:
            return verdict
        time.sleep(settle_seconds)
        after = _snapshot(path)
    except PermissionError as e:
        return Verdict(path, False, f"cannot read {e.filename or path}: permission denied")
    except OSError as e:
        return Verdict(path, False, f"cannot read {e.filename or path}: {e.strerror}")
    if before != after:
        changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
        return Verdict(path, False, f"still being written: {', '.join(changed[:3])} changed during the last "
                                    f"{settle_seconds:g} s")
    return verdict


def inspect_full(path: Path, allow_pickle: bool) -> Verdict:
    """One look at a folder of full weights (config.json, tokenizer, weights); raises OSError for a
    file that cannot be read (`settled` turns that into the verdict)."""
    config_path = path / CONFIG
    if not config_path.is_file():
        return Verdict(path, False, "config.json is missing")
    config, error = parse_json(config_path.read_bytes())
    if error:
        return Verdict(path, False, f"config.json does not parse as JSON ({error}; still being written?)")
    if not isinstance(config, dict):
        return Verdict(path, False, "config.json is not a JSON object")
    architectures = config.get("architectures") or []
    if not architectures:
        return Verdict(path, False, "config.json names no architecture (\"architectures\" is missing or empty)")
    if not (isinstance(architectures, list) and isinstance(architectures[0], str) and architectures[0]):
        return Verdict(path, False, "config.json: \"architectures\" is not a list of class names")
    architecture = architectures[0]
    model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None

    tokenizer = next((s for s in TOKENIZER_SETS if all((path / f).is_file() for f in s)), None)
    if tokenizer is None:
        return Verdict(path, False, "no tokenizer: none of tokenizer.json, tokenizer.model, "
                                    "vocab.json+merges.txt is present", architecture=architecture)
    tokenizer_files = [path / f for f in tokenizer]
    # Every tokenizer file present must be whole: the converter reads tokenizer.model when it exists.
    for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json", "tokenizer.model"):
        if (path / name).is_file() and not _tokenizer_file_loads(path / name):
            return Verdict(path, False, f"{name} does not load (still being written?)", architecture=architecture)

    weights = _weights(path, allow_pickle)
    if isinstance(weights, str):
        return Verdict(path, False, weights, architecture=architecture)
    for f in [config_path, *tokenizer_files, *weights]:
        if inside(path, str(f.relative_to(path))) is None:
            return Verdict(path, False, f"{shown(f.name)} is a link that leads outside the checkpoint directory",
                           architecture=architecture)
    total = 0
    count = len(weights)
    for i, shard in enumerate(weights, 1):
        name = shown(str(shard.relative_to(path)))
        label = name if count == 1 else f"shard {i} of {count} ({name})"
        if not shard.is_file():
            return Verdict(path, False, f"{label} is missing", architecture=architecture)
        size = shard.stat().st_size
        total += size
        if shard.name in PICKLE_WEIGHTS:  # only with allow_pickle: pickle files carry no length header
            continue
        try:
            expected = safetensors_expected_size(shard)
        except ValueError as e:
            return Verdict(path, False, f"{label} is unreadable: {e}", architecture=architecture)
        if size < expected:
            return Verdict(path, False, f"{label} is truncated: {human_bytes(size)} of {human_bytes(expected)}",
                           architecture=architecture)
        if size > expected:
            return Verdict(path, False, f"{label} is longer than its header says "
                                        f"({human_bytes(size)} > {human_bytes(expected)})", architecture=architecture)
    return Verdict(path, True, "complete", architecture=architecture, model_type=model_type,
                   weight_files=weights, tokenizer_files=tokenizer_files, total_bytes=total)


def checkpoint_sha256(verdict: Verdict) -> str:
    """A content hash of the files that define the model (names and bytes), for content-addressing."""
    if not verdict.complete:
        raise ValueError(f"cannot hash an incomplete checkpoint: {verdict.reason}")
    # Said because it reads every byte (minutes for a large model): a run should do it once.
    log.info("hashing %s (%s)", verdict.path, human_bytes(verdict.total_bytes))
    h = hashlib.sha256()
    for f in verdict.content_files():
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()
