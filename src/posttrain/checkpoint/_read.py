"""Reading a checkpoint folder's files, which come from outside and may be half-written.

Shared by the full-weights and the adapter checks: JSON that may not parse, safetensors headers
checked field by field before any is used, and file names that may lead out of the folder.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

# A safetensors header above this is corrupt, not large (real ones are kilobytes to a few MB).
_MAX_HEADER = 100 * 1024 * 1024


def parse_json(data: bytes | str) -> tuple[object, str | None]:
    """(value, None), or (None, why not) for bytes that are not JSON (bad UTF-8, bad syntax, absurd nesting)."""
    try:
        return json.loads(data), None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, e.__class__.__name__
    except RecursionError:
        return None, "nested too deeply"


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _header_and_length(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER:
            raise ValueError(f"header length {n} is not plausible")
        raw = f.read(n)
        if len(raw) < n:
            raise ValueError("the JSON header itself is cut short")
    header, error = parse_json(raw)
    if error:
        raise ValueError(f"its JSON header does not parse ({error})")
    if not isinstance(header, dict):
        raise ValueError(f"its JSON header is a {type(header).__name__}, not an object")
    return header, n


def safetensors_header(path: Path) -> dict:
    """A safetensors file's JSON header (tensor name → dtype, shape, data_offsets), read without the
    tensors. Raises ValueError, with the reason, for anything that is not such a header."""
    return _header_and_length(path)[0]


def safetensors_expected_size(path: Path) -> int:
    """The length the file must have according to its own header (8 + header + tensor data).

    Raises ValueError, with the reason, for any header that is not a safetensors header: the file
    comes from outside, so every field is checked before it is used.
    """
    header, n = _header_and_length(path)
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
                and offsets[0] <= offsets[1]):
            raise ValueError(f"tensor {name[:80]!r} has no valid data_offsets")
        end = max(end, offsets[1])
    return 8 + n + end


def tensor_sizes(weight_files: list[Path]) -> list[int]:
    """Elements per tensor, from the safetensors headers (no tensor data is read). A pickle file's
    tensors cannot be listed without unpickling it: it counts as one tensor of size / 2 elements, an
    upper bound. For estimates (disk space, the quantizer's memory); an odd entry counts 0."""
    sizes: list[int] = []
    for f in weight_files:
        if f.suffix != ".safetensors":
            sizes.append(f.stat().st_size // 2)
            continue
        for key, info in safetensors_header(f).items():
            shape = info.get("shape") if isinstance(info, dict) and key != "__metadata__" else None
            if isinstance(shape, list) and all(map(_is_count, shape)):
                sizes.append(math.prod(shape))
    return sizes


def shown(name: str) -> str:
    """A file name for a one-line reason: as it is when printable, else Python's quoted form."""
    return name if name.isprintable() else repr(name)


def inside(root: Path, name: str) -> Path | None:
    """`root / name` when that file lies inside `root`, following symlinks; else None.

    A Hugging Face hub cache snapshot keeps every file as a symlink into its repository's
    `blobs/` folder (`models--org--name/snapshots/REV/x -> ../../blobs/SHA`); those stay inside the
    repository folder and are accepted.
    """
    if not name or "\0" in name:
        return None
    try:
        target = (root / name).resolve()
        allowed = [root.resolve()]
    except (OSError, RuntimeError, ValueError):  # symlink loop, unencodable name
        return None
    if allowed[0].parent.name == "snapshots" and allowed[0].parent.parent.name.startswith("models--"):
        allowed.append(allowed[0].parent.parent / "blobs")
    return root / name if any(target.is_relative_to(a) and target != a for a in allowed) else None
