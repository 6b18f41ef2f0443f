"""Read a GGUF file's header with llama.cpp's own gguf-py (from the provisioned converter tree)."""

from __future__ import annotations

import importlib
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from posttrain.errors import PosttrainError
from posttrain.toolchain import ConverterTree


def gguf_module(tree: ConverterTree):
    """The `gguf` package that belongs to this converter tree (PyPI's release lags behind it)."""
    if "gguf" not in sys.modules:
        sys.path.insert(0, str(tree.gguf_py))
    return importlib.import_module("gguf")


@dataclass
class GGUFHeader:
    architecture: str
    tensor_count: int
    file_type: str
    tokenizer_model: str | None
    tokenizer_pre: str | None
    add_bos: bool | None
    name: str | None
    tensor_types: dict[str, int] = field(default_factory=dict)
    # 2-D tensors whose rows are not a multiple of 256: k-quants cannot apply to them.
    k_incompatible: list[str] = field(default_factory=list)
    fallback_types: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _field(reader, key: str):
    f = reader.get_field(key)
    if f is None:
        return None
    value = f.contents()
    return value


def read_header(path: Path, tree: ConverterTree, intended: str | None = None) -> GGUFHeader:
    gguf = gguf_module(tree)
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:
        raise PosttrainError(f"{path.name} is not a readable GGUF file: {e}") from None
    ftype = _field(reader, "general.file_type")
    try:
        ftype_name = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else "unknown"
    except ValueError:
        ftype_name = str(ftype)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    incompatible = [t.name for t in reader.tensors
                    if len(t.shape) >= 2 and int(t.shape[0]) % 256 != 0]
    fallback: Counter = Counter()
    if intended and ("_K" in intended or intended.startswith("IQ")):
        by_name = {t.name: t.tensor_type.name for t in reader.tensors}
        fallback = Counter(by_name[n] for n in incompatible)
    return GGUFHeader(
        architecture=str(_field(reader, "general.architecture")),
        tensor_count=len(reader.tensors),
        file_type=ftype_name,
        tokenizer_model=_field(reader, "tokenizer.ggml.model"),
        tokenizer_pre=_field(reader, "tokenizer.ggml.pre"),
        add_bos=_field(reader, "tokenizer.ggml.add_bos_token"),
        name=_field(reader, "general.name"),
        tensor_types=dict(types),
        k_incompatible=incompatible if intended and ("_K" in intended or intended.startswith("IQ")) else [],
        fallback_types=dict(fallback),
    )
