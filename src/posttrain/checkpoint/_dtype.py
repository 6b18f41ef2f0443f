"""The floating-point type a checkpoint's weights are stored in: what decides whether a BF16 GGUF is
its exact weights (bfloat16) or a rounding of them (float16, float32).

Read from what is on disk, not from what config.json claims: the safetensors headers name each
tensor's type and byte range, so the type that holds most of the bytes wins. config.json's
`torch_dtype` (`dtype` in newer transformers) is the fallback for pickle weights, whose tensors
cannot be listed without unpickling them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from posttrain.checkpoint._read import parse_json, safetensors_header

# safetensors' spelling → torch's, for the floating-point types a checkpoint's weights come in.
_SAFETENSORS_FLOATS = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
_CONFIG_FLOATS = {"bfloat16", "float16", "float32", "float64"}


def checkpoint_dtype(folder: Path) -> str | None:
    """"bfloat16", "float16", "float32" (or "float64") for the weights in `folder`; None when neither
    the headers nor config.json say."""
    folder = Path(folder)
    by_bytes: Counter[str] = Counter()
    for f in sorted(folder.glob("*.safetensors")):
        for dtype, size in _tensor_bytes(f):
            if dtype in _SAFETENSORS_FLOATS:
                by_bytes[_SAFETENSORS_FLOATS[dtype]] += size
    if by_bytes:
        return by_bytes.most_common(1)[0][0]
    return _config_dtype(folder / "config.json")


def _tensor_bytes(path: Path) -> list[tuple[str, int]]:
    """(dtype, bytes) per tensor of one safetensors file, from its header; [] for a file that is not one."""
    try:
        header = safetensors_header(path)
    except (OSError, ValueError):
        return []
    out = []
    for key, info in header.items():
        if key == "__metadata__" or not isinstance(info, dict):
            continue
        offsets, dtype = info.get("data_offsets"), info.get("dtype")
        if isinstance(dtype, str) and isinstance(offsets, list) and len(offsets) == 2 \
                and all(isinstance(o, int) for o in offsets):
            out.append((dtype, max(0, offsets[1] - offsets[0])))
    return out


def _config_dtype(config: Path) -> str | None:
    try:
        doc, _ = parse_json(config.read_bytes())
    except OSError:
        return None
    if not isinstance(doc, dict):
        return None
    for key in ("torch_dtype", "dtype"):
        value = doc.get(key)
        if isinstance(value, str) and value.removeprefix("torch.") in _CONFIG_FLOATS:
            return value.removeprefix("torch.")
    return None
