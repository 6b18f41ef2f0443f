"""Read a GGUF file's header: metadata keys and the tensor table (names, shapes, types)."""

from __future__ import annotations

import importlib
import mmap
import struct
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


# GGUF value types (gguf.h): fixed-size scalars by struct format; 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass
class _RawHeader:
    metadata: dict[str, object]
    tensors: list[tuple[str, tuple[int, ...], int]]  # name, shape (ne0 first), ggml type


def _scan(path: Path) -> _RawHeader:
    """Key/value metadata and the tensor table, without reading tensor data or materialising arrays.

    gguf-py's GGUFReader builds a numpy view per vocabulary string (seconds for a 50k-token vocab);
    a variant check needs a handful of keys and the tensor table, so arrays are skipped, not parsed.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError("no GGUF magic number")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        off = 24

        def string(at: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", buf, at)
            return bytes(buf[at + 8: at + 8 + n]).decode("utf-8", "replace"), at + 8 + n

        def value(kind: int, at: int) -> tuple[object, int]:
            if kind in _SCALARS:
                fmt = "<" + _SCALARS[kind]
                return struct.unpack_from(fmt, buf, at)[0], at + struct.calcsize(fmt)
            if kind == _STRING:
                return string(at)
            if kind == _ARRAY:
                item, count = struct.unpack_from("<IQ", buf, at)
                at += 12
                if item in _SCALARS:
                    return None, at + count * struct.calcsize("<" + _SCALARS[item])
                if item == _STRING:  # the vocabulary and merges: skipped by their lengths, never decoded
                    for _ in range(count):
                        at += 8 + struct.unpack_from("<Q", buf, at)[0]
                    return None, at
                for _ in range(count):
                    _, at = value(item, at)
                return None, at
            raise ValueError(f"unknown GGUF value type {kind}")

        metadata: dict[str, object] = {}
        for _ in range(n_kv):
            key, off = string(off)
            (kind,) = struct.unpack_from("<I", buf, off)
            metadata[key], off = value(kind, off + 4)
        tensors = []
        for _ in range(n_tensors):
            name, off = string(off)
            (n_dims,) = struct.unpack_from("<I", buf, off)
            shape = struct.unpack_from(f"<{n_dims}Q", buf, off + 4)
            off += 4 + 8 * n_dims
            ggml_type, _offset = struct.unpack_from("<IQ", buf, off)
            off += 12
            tensors.append((name, shape, ggml_type))
    return _RawHeader(metadata, tensors)


def read_header(path: Path, tree: ConverterTree, intended: str | None = None) -> GGUFHeader:
    gguf = gguf_module(tree)  # for the enum names, which follow the converter's version
    try:
        raw = _scan(path)
    except (ValueError, struct.error, OSError) as e:
        raise PosttrainError(f"{path.name} is not a readable GGUF file: {e}") from None
    meta = raw.metadata
    ftype = meta.get("general.file_type")
    try:
        ftype_name = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else "unknown"
    except ValueError:
        ftype_name = str(ftype)

    def type_name(t: int) -> str:
        try:
            return gguf.GGMLQuantizationType(t).name
        except ValueError:
            return str(t)

    types = Counter(type_name(t) for _, _, t in raw.tensors)
    k_target = bool(intended) and ("_K" in intended or intended.startswith("IQ"))
    incompatible = [name for name, shape, _ in raw.tensors if len(shape) >= 2 and shape[0] % 256 != 0]
    by_name = {name: type_name(t) for name, _, t in raw.tensors}
    fallback = Counter(by_name[n] for n in incompatible) if k_target else Counter()
    return GGUFHeader(
        architecture=str(meta.get("general.architecture")),
        tensor_count=len(raw.tensors),
        file_type=ftype_name,
        tokenizer_model=meta.get("tokenizer.ggml.model"),
        tokenizer_pre=meta.get("tokenizer.ggml.pre"),
        add_bos=meta.get("tokenizer.ggml.add_bos_token"),
        name=meta.get("general.name"),
        tensor_types=dict(types),
        k_incompatible=incompatible if k_target else [],
        fallback_types=dict(fallback),
    )
