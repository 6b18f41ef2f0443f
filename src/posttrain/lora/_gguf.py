"""The adapter route: llama.cpp's own convert_lora_to_gguf.py writes the adapter as a GGUF LoRA.

The script comes from the same provisioned tree as the model converter (`posttrain.toolchain`), so
adapter and base GGUF agree with the runtime that applies one to the other. It runs as a child
process that ends with its parent, writes under a temporary name, and is renamed into place only
once the file reads back as a GGUF adapter. A sidecar records the adapter it came from (reruns reuse it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from posttrain._files import sha256_file, write_json_atomic
from posttrain._lifeline import no_window_kwargs
from posttrain.checkpoint import AdapterVerdict, checkpoint_sha256, inspect_adapter
from posttrain.errors import CheckpointIncomplete, PosttrainError
from posttrain.toolchain import converter_env, find_converter

_SHIM = Path(__file__).parent.parent / "convert" / "_converter_shim.py"
ADAPTER_TYPES = ("f16", "f32", "bf16", "q8_0")


def _sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".posttrain.json")


def _reusable(out: Path, adapter_sha: str, outtype: str) -> bool:
    try:
        doc = json.loads(_sidecar(out).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return (isinstance(doc, dict) and doc.get("adapter_sha256") == adapter_sha and doc.get("outtype") == outtype
            and out.is_file() and doc.get("sha256") == sha256_file(out))


def _error(output: str, verdict: AdapterVerdict, log: Path) -> PosttrainError:
    m = re.search(r"Model (\S+) is not supported", output)
    if m:
        return PosttrainError(f"llama.cpp's LoRA converter does not know the base architecture {m.group(1)}",
                              remedy="no GGUF route for this base: use a llama.cpp checkout that supports it "
                                     "(--llama-cpp-dir)")
    if "lora_magnitude_vector" in output:
        return PosttrainError("llama.cpp's LoRA converter cannot write DoRA adapters (magnitude vectors)",
                              remedy="use the merge route (`posttrain lora merge`), which PEFT supports")
    if "Embeddings is present in the adapter" in output:
        return PosttrainError("the adapter trains the token embeddings, which a GGUF LoRA cannot carry",
                              remedy="use the merge route (`posttrain lora merge`)")
    last = next((ln for ln in reversed(output.strip().splitlines()) if ln.strip()), "no output")
    return PosttrainError(f"llama.cpp's LoRA converter failed for {verdict.path}: {last.strip()[:300]}",
                          remedy=f"full log: {log}")


def convert_adapter(adapter: str | Path | AdapterVerdict, out_path: str | Path, *, base: str | Path | None = None,
                    outtype: str = "f16", llama_cpp_dir: str | Path | None = None,
                    adapter_sha256: str | None = None) -> Path:
    """Write the adapter as a GGUF LoRA at `out_path` (reused when it is already this adapter's)."""
    verdict = adapter if isinstance(adapter, AdapterVerdict) else inspect_adapter(adapter, base=base)
    if not verdict.complete:
        raise CheckpointIncomplete(f"{verdict.path} is not a complete adapter: {verdict.reason}",
                                   remedy=verdict.remedy or "wait for training to finish, or `posttrain check` it")
    if "adapter" not in verdict.routes:
        raise PosttrainError(f"no GGUF adapter for {verdict.path}: {verdict.route_note}",
                             remedy="use the merge route (`posttrain lora merge`), which PEFT supports")
    outtype = outtype.lower()
    if outtype not in ADAPTER_TYPES:
        raise PosttrainError(f"unknown adapter type {outtype!r}", remedy=f"use one of {', '.join(ADAPTER_TYPES)}")
    out = Path(out_path)
    sha = adapter_sha256 or checkpoint_sha256(verdict)
    if _reusable(out, sha, outtype):
        return out
    tree = find_converter(llama_cpp_dir)
    if not tree.lora_script.is_file():
        raise PosttrainError(f"{tree.root} has no {tree.lora_script.name}",
                             remedy="use a llama.cpp checkout that has it, or the provisioned sdist tree")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    log = out.with_name(f"{out.name}.log")
    cmd = [sys.executable, str(_SHIM), str(tree.root), f"--parent={os.getpid()}", "--lora", "--",
           "--base", str(verdict.base), "--outtype", outtype, "--outfile", str(tmp), str(verdict.path)]
    env = {**converter_env(tree), "HF_HUB_OFFLINE": "1"}
    try:
        with open(log, "w") as logf:
            proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, **no_window_kwargs())
        if proc.returncode != 0:
            raise _error(log.read_text(errors="replace"), verdict, log)
        with open(tmp, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise PosttrainError(f"llama.cpp's LoRA converter wrote no GGUF file for {verdict.path}",
                                     remedy=f"full log: {log}")
        digest = sha256_file(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    write_json_atomic(_sidecar(out), {"adapter": str(verdict.path), "adapter_sha256": sha, "base": str(verdict.base),
                                      "outtype": outtype, "sha256": digest, "lora_alpha": verdict.lora_alpha,
                                      "rank": verdict.rank, "toolchain": tree.describe()})
    return out
