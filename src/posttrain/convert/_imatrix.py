"""Importance matrices: computed by llama.cpp's `llama-imatrix` from an F16 GGUF and the user's text,
and the variants quantized with one (`llama-quantize --imatrix`), side by side with those made without.

Both are content-addressed. An importance matrix is cached under a name derived from the F16's
sha256, the text's sha256, the options and the tools' version, so the same model and text never
compute it twice. The variants made with it live in a folder of their own (`<gguf>/imatrix/`) with a
manifest that records, for each, the F16 and importance matrix it came from: a rerun with the same
F16 and matrix reuses the file, anything else remakes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from posttrain._files import sha256_file, write_json_atomic
from posttrain._locks import FileLock
from posttrain.convert._quant_types import NEEDS_IMATRIX, is_k_quant
from posttrain.errors import PosttrainError
from posttrain.llamacpp import LlamaTools, find_llama_tools
from posttrain._lifeline import no_window_kwargs

SUFFIX = "-imatrix"  # "Q4_K_M-imatrix": a label that is a safe file-name part (paths.safe_name keeps it)
IMATRIX_VARIANTS = "imatrix-variants.json"  # the imatrix/ subfolder's own manifest (_imatrix_variants.py)
IMATRIX_VARIANTS_SCHEMA = "posttrain.imatrix-variants/1"
DEFAULT_CHUNK = 512  # llama-imatrix's own default context per chunk
# Enough for a stable matrix (upstream's published matrices use ~100-200 chunks) at a bounded cost.
DEFAULT_MAX_CHUNKS = 100
IMATRIX_TIMEOUT_S = 3600
QUANTIZE_TIMEOUT_S = 3600


def takes_imatrix(quant: str) -> bool:
    """K-quants and IQ types use an importance matrix; F16, Q8_0 and the legacy Q4_0…Q5_1 do not."""
    return is_k_quant(quant)


def label(quant: str) -> str:
    return quant + SUFFIX


def base_quant(name: str) -> str:
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


@dataclass(frozen=True)
class Imatrix:
    path: Path
    sha256: str
    text_sha256: str
    f16_sha256: str
    options: dict
    seconds: float
    cached: bool

    def to_json(self) -> dict:
        return {"file": str(self.path), "sha256": self.sha256, "text_sha256": self.text_sha256,
                "f16_sha256": self.f16_sha256, "options": self.options, "seconds": round(self.seconds, 2),
                "cached": self.cached}


def compute_imatrix(f16: Path, text_file: Path, cache: Path, *, chunk: int = DEFAULT_CHUNK,
                    max_chunks: int | None = DEFAULT_MAX_CHUNKS, threads: int | None = None,
                    tools: LlamaTools | None = None, f16_sha256: str | None = None,
                    timeout: float = IMATRIX_TIMEOUT_S) -> Imatrix:
    """The importance matrix of `f16` on the text in `text_file`, cached in `cache`."""
    from posttrain import llamacpp

    tools = tools or find_llama_tools()
    f16_sha = f16_sha256 or sha256_file(f16)
    text_sha = sha256_file(text_file)
    # Threads change only the speed, not the matrix: they are not part of the key.
    options = {"chunk": chunk, "max_chunks": max_chunks, "llama_version": tools.llama_version, "commit": tools.commit}
    key = hashlib.sha256(json.dumps({"f16": f16_sha, "text": text_sha, **options}, sort_keys=True).encode()).hexdigest()
    out = cache / f"imatrix-{key[:20]}.gguf"
    meta_path = out.with_suffix(".json")
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(cache / ".lock"):
        if out.is_file() and meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (ValueError, RecursionError):  # damaged: computed again below
                meta = {}
            if isinstance(meta, dict) and meta.get("sha256") == sha256_file(out):
                return Imatrix(out, meta["sha256"], text_sha, f16_sha, options, meta.get("seconds", 0.0), True)
        _require_two_chunks(f16, text_file, chunk)
        partial = cache / f".{out.name}.{os.getpid()}.partial.gguf"
        log = cache / f"{out.stem}.log"
        # The text is named relative to its folder: llama-imatrix stores the name in the matrix (and
        # llama-quantize in each variant), which must not depend on a temporary folder's random name.
        cmd = [str(tools.imatrix), "-m", str(f16.resolve()), "-f", text_file.name, "-o", str(partial.resolve()),
               "--output-format", "gguf", "-c", str(chunk), "-t", str(threads or llamacpp.best_threads()),
               "--no-ppl"]
        if max_chunks:
            cmd += ["--chunks", str(max_chunks)]
        started = time.perf_counter()
        try:
            _run(cmd, log, timeout, "computing the importance matrix", cwd=text_file.parent)
            if not partial.is_file():
                raise PosttrainError("llama-imatrix wrote no importance matrix", remedy=f"see {log}")
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
        seconds = time.perf_counter() - started
        sha = sha256_file(out)
        write_json_atomic(meta_path, {"sha256": sha, "f16": str(f16), "f16_sha256": f16_sha, "text_sha256": text_sha,
                                      "options": options, "seconds": round(seconds, 2)})
    return Imatrix(out, sha, text_sha, f16_sha, options, seconds, False)


def _require_two_chunks(f16: Path, text_file: Path, chunk: int) -> None:
    """Refuse a text shorter than llama-imatrix's two chunks, counted as it counts them, before it
    runs: its own message says so, but llama.cpp writes its log from a thread and loses the last
    lines when the tool exits at once (measured: 6 of 300 runs on a 7-token text left only the
    first warning), so its log cannot be what tells a short text from a failure."""
    from posttrain import llamacpp

    tokens = llamacpp.count_tokens(f16, text_file.read_text(encoding="utf-8", errors="replace"))
    if tokens < 2 * chunk:
        raise PosttrainError(f"the text is too short for an importance matrix: {text_file} is {tokens} tokens, "
                             f"and llama-imatrix needs at least two chunks of {chunk} ({2 * chunk} tokens)",
                             remedy="pass a longer --imatrix-text (a few thousand words of the fine-tuning data)")


def _run(cmd: list[str], log: Path, timeout: float, what: str, cwd: Path | None = None) -> None:
    from posttrain import llamacpp

    with open(log, "w") as logf:
        try:
            proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout, cwd=cwd,
                                  **no_window_kwargs())
        except subprocess.TimeoutExpired:
            raise PosttrainError(f"{what} took more than {timeout:.0f} s and was stopped", remedy=f"see {log}") from None
    if proc.returncode != 0:
        # The tool's own words where its log kept them (its last error line, else its last line), and
        # how it ended: the log may have lost its final lines (see _require_two_chunks).
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        said = next((ln for ln in reversed(lines) if " E " in ln), lines[-1] if lines else "no output")
        ended = llamacpp.describe_exit(proc.returncode) or f"exit status {proc.returncode}"
        raise PosttrainError(f"{what} failed ({ended}): {said}", remedy=f"full log: {log}")


def quantize_with_imatrix(tools: LlamaTools, src: Path, dest: Path, quant: str, imatrix: Path, log: Path,
                          threads: int | None = None, timeout: float = QUANTIZE_TIMEOUT_S) -> None:
    """`llama-quantize --imatrix` (the Python binding cannot pass an importance matrix: a C++ map)."""
    from posttrain import llamacpp

    cmd = [str(tools.quantize), "--imatrix", str(imatrix), str(src), str(dest), quant,
           str(threads or llamacpp.cpu_threads())]
    try:
        _run(cmd, log, timeout, f"quantizing {quant} with the importance matrix")
    except PosttrainError as e:
        remedy = e.remedy
        if quant in NEEDS_IMATRIX:
            remedy = f"{quant} needs an importance matrix of enough text; {remedy}"
        raise PosttrainError(f"llama.cpp's quantizer failed to make {quant} with the importance matrix",
                             remedy=remedy) from None
