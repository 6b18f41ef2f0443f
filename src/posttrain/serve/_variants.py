"""The GGUF variants to serve or register: from the convert stage's `manifest.json`, else the files."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from posttrain._files import sha256_file
from posttrain.errors import PosttrainError


@dataclass(frozen=True)
class Variant:
    path: Path
    quant: str  # upper case, llama.cpp's spelling: F16, Q8_0, Q4_K_M
    sha256: str  # hex, no prefix
    model_name: str
    checkpoint: Path | None = None  # where the chat template can be read, when known



def gguf_metadata(path: Path) -> dict[str, str]:
    """The GGUF's key/value header as llama.cpp reads it (vocabulary only: fast, no weights)."""
    from llama_cpp._utils import suppress_stdout_stderr

    from posttrain import _native

    Llama = _native.load_llama_cpp().Llama

    try:
        # llama.cpp prints context warnings from C even with verbose=False; keep the CLI's output clean.
        with suppress_stdout_stderr(disable=False):
            model = Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise PosttrainError(f"{path} is not a GGUF file llama.cpp can read: {e}",
                             remedy="re-run `posttrain convert`") from None
    try:
        return dict(model.metadata)
    finally:
        model.close()


def _ftype_names() -> dict[int, str]:
    import llama_cpp

    names = {}
    for attr in dir(llama_cpp):
        if attr.startswith("LLAMA_FTYPE_") and attr != "LLAMA_FTYPE_GUESSED":
            names[getattr(llama_cpp, attr)] = attr.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
    return names


# Longest first, so "Q4_K_M" wins over "Q4_K" and "BF16" over "F16".
_QUANT_IN_NAME = re.compile(
    r"(?<![A-Za-z0-9])(I?Q\d_(?:K_[SML]|K|[01]|XXS|XS|NL|[SML])|BF16|F16|F32|TQ\d_0|MXFP4(?:_MOE)?)(?![A-Za-z0-9])",
    re.IGNORECASE,
)


def quant_from_name(name: str) -> str | None:
    hits = _QUANT_IN_NAME.findall(name.replace("-", "_").replace(".", "_"))
    return hits[-1].upper() if hits else None


def _model_name_from_file(path: Path, quant: str) -> str:
    stem = path.stem
    for sep in ("-", "_", "."):
        suffix = f"{sep}{quant}"
        if stem.lower().endswith(suffix.lower()):
            return stem[: -len(suffix)] or stem
    return stem


def _from_manifest(manifest_path: Path, only: set[Path] | None) -> list[Variant]:
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PosttrainError(f"cannot read {manifest_path}: {e}", remedy="re-run `posttrain convert`") from None
    model = data.get("model_name") or data.get("model") or manifest_path.parent.name
    ckpt = data.get("checkpoint") or data.get("checkpoint_dir")
    out = []
    listed = data.get("variants") or []
    # schema posttrain.convert/1 keys variants by quant; a plain list is accepted too.
    entries = [dict(v, quant=v.get("quant") or q) for q, v in listed.items()] if isinstance(listed, dict) else listed
    for v in entries:
        file = v.get("file") or v.get("path")
        if not file:
            continue
        path = (manifest_path.parent / file).resolve()
        if only is not None and path not in only:
            continue
        if not path.is_file():
            raise PosttrainError(f"{manifest_path} lists {file}, which is missing", remedy="re-run `posttrain convert`")
        out.append(Variant(path=path, quant=str(v.get("quant") or quant_from_name(path.name) or "unknown").upper(),
                           sha256=(v.get("sha256") or sha256_file(path)).removeprefix("sha256:"),
                           model_name=str(model), checkpoint=Path(ckpt) if ckpt else None))
    return out


def _from_file(path: Path) -> Variant:
    quant = quant_from_name(path.name)
    if quant is None:
        file_type = gguf_metadata(path).get("general.file_type")
        quant = _ftype_names().get(int(file_type), "unknown") if file_type and file_type.isdigit() else "unknown"
    return Variant(path=path.resolve(), quant=quant, sha256=sha256_file(path),
                   model_name=_model_name_from_file(path, quant))


def discover_variants(target: Path | list[Path]) -> list[Variant]:
    """Variants in a directory (or the given files), described by `manifest.json` when it is there.

    The manifest's sha256 is trusted (the convert stage verified it when writing); files it does not
    list are hashed here.
    """
    files = [Path(p) for p in target] if isinstance(target, list) else None
    if files is None:
        target = Path(target)
        if target.is_file():
            files = [target]
        elif target.is_dir():
            manifest = target / "manifest.json"
            if manifest.is_file():
                found = _from_manifest(manifest, None)
                if found:
                    return found
            files = sorted(target.glob("*.gguf"))
        else:
            raise PosttrainError(f"{target} does not exist", remedy="give a GGUF file or the directory convert wrote")
    if not files:
        raise PosttrainError(f"no .gguf files in {target}", remedy="run `posttrain convert` first")
    out: list[Variant] = []
    for f in files:
        if not f.is_file():
            raise PosttrainError(f"{f} does not exist", remedy="give a GGUF file or the directory convert wrote")
        manifest = f.parent / "manifest.json"
        listed = _from_manifest(manifest, {f.resolve()}) if manifest.is_file() else []
        out.extend(listed or [_from_file(f)])
    return out
