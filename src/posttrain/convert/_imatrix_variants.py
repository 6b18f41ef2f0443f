"""Variants quantized with an importance matrix, next to (not instead of) those made without.

They are made from the verified F16 of a convert folder into its `imatrix/` subfolder, named
`<model>-<QUANT>-imatrix.gguf`, and listed in that subfolder's own manifest. Each entry records the
F16 sha256 and the importance matrix sha256 it was made from, and the tools' version: a rerun with
the same three reuses the file (after checking its hash), anything else remakes it. Like convert's
variants, a file gets its final name only once its header reads back and it loads in llama.cpp.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from posttrain._files import sha256_file, write_json_atomic
from posttrain._locks import FileLock
from posttrain.convert._built import BuiltVariant
from posttrain.convert._convert import _check_and_place
from posttrain.convert._imatrix import (
    IMATRIX_VARIANTS,
    IMATRIX_VARIANTS_SCHEMA,
    Imatrix,
    label,
    quantize_with_imatrix,
)
from posttrain.llamacpp import LlamaTools, find_llama_tools
from posttrain.paths import confined
from posttrain.store import utcnow
from posttrain.toolchain import find_converter


def make_imatrix_variants(f16: BuiltVariant, quants: list[str], imatrix: Imatrix, out_dir: Path, model_name: str,
                          *, tools: LlamaTools | None = None, llama_cpp_dir: str | Path | None = None,
                          say=None) -> list[BuiltVariant]:
    """`quants` quantized from `f16` with `imatrix`, as BuiltVariants whose `quant` is the label
    (`Q4_K_M-imatrix`); made in `out_dir`, reused when the manifest there says they are the same."""
    say = say or (lambda variant, text: None)
    tools = tools or find_llama_tools()
    tree = find_converter(llama_cpp_dir)  # gguf-py, to read the written headers back
    out_dir.mkdir(parents=True, exist_ok=True)
    source = {"f16_sha256": f16.sha256, "imatrix_sha256": imatrix.sha256, "llama_version": tools.llama_version,
              "commit": tools.commit}
    made: list[BuiltVariant] = []
    with FileLock(out_dir / ".lock"):
        for stale in out_dir.glob(".*.gguf.*.partial"):
            stale.unlink(missing_ok=True)
        manifest = _load(out_dir / IMATRIX_VARIANTS)
        entries = manifest.get("variants") if isinstance(manifest.get("variants"), dict) else {}
        manifest = {"schema": IMATRIX_VARIANTS_SCHEMA, "model_name": model_name, "f16": f16.path.name,
                    "imatrix": imatrix.to_json(), "variants": entries}
        for quant in quants:
            name = label(quant)
            entry = entries.get(name)
            final = confined(out_dir, f"{model_name}-{name}.gguf")
            if _reusable(entry, final, source):
                say(name, "cached")
                made.append(BuiltVariant(name, final, entry["sha256"], entry["size_bytes"], entry["seconds"],
                                         entry["made_by"], cached=True, header=entry.get("header", {})))
                continue
            say(name, "quantizing with the importance matrix (llama-quantize)")
            partial = out_dir / f".{final.name}.{os.getpid()}.partial"
            started = time.perf_counter()
            try:
                quantize_with_imatrix(tools, f16.path, partial, quant, imatrix.path, out_dir / f"quantize-{name}.log")
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            variant = _check_and_place(quant, partial, final, tree, "llama-quantize --imatrix",
                                       time.perf_counter() - started, say)
            variant.quant = name
            variant.sha256 = sha256_file(final)  # _check_and_place leaves the hash to its caller
            made.append(variant)
            entries[name] = {**variant.to_json(), **source, "made_at": utcnow()}
            write_json_atomic(out_dir / IMATRIX_VARIANTS, manifest)  # each variant recorded as soon as it exists
        write_json_atomic(out_dir / IMATRIX_VARIANTS, manifest)
    return made


def _load(path: Path) -> dict:
    """The manifest an earlier run wrote, or {} (it is rewritten) when there is none or it is damaged."""
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _reusable(entry, final: Path, source: dict) -> bool:
    if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in source.items()):
        return False
    if not isinstance(entry.get("sha256"), str) or type(entry.get("size_bytes")) is not int:
        return False
    return (final.is_file() and final.stat().st_size == entry["size_bytes"]
            and sha256_file(final) == entry["sha256"])
