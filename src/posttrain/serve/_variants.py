"""The GGUF variants to serve or register: from the convert stage's `manifest.json`, else the files."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from posttrain._files import sha256_file
from posttrain.errors import PosttrainError
from posttrain.paths import confined


@dataclass(frozen=True)
class Variant:
    path: Path
    quant: str  # upper case, llama.cpp's spelling: F16, Q8_0, Q4_K_M
    sha256: str  # hex, no prefix
    model_name: str
    checkpoint: Path | None = None  # where the chat template can be read, when known
    # A GGUF LoRA applied on top of `path` (Ollama's ADAPTER), with its sha256 (hex, no prefix).
    adapter: Path | None = None
    adapter_sha256: str | None = None



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


def _manifest_entries(manifest_path: Path) -> tuple[dict, list[dict]]:
    """(the manifest, its variant entries), each checked to be what `posttrain convert` writes."""
    bad = PosttrainError(f"{manifest_path} is not a manifest `posttrain convert` wrote",
                         remedy="re-run `posttrain convert`, or pass the .gguf files themselves")
    try:
        data = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise PosttrainError(f"cannot read {manifest_path}: {e.strerror}", remedy="re-run `posttrain convert`") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise bad from None
    if not isinstance(data, dict):
        raise bad
    listed = data.get("variants") or []
    # schema posttrain.convert/1 keys variants by quant; a plain list is accepted too.
    if isinstance(listed, dict):
        listed = [dict(v, quant=v.get("quant") or q) if isinstance(v, dict) else v for q, v in listed.items()]
    if not isinstance(listed, list) or not all(isinstance(v, dict) for v in listed):
        raise bad
    return data, listed


_SHA256 = re.compile(r"(sha256:)?[0-9a-f]{64}")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system: no such file either
        return False


def _from_manifest(manifest_path: Path, only: set[Path] | None) -> list[Variant]:
    data, entries = _manifest_entries(manifest_path)
    model = data.get("model_name") or data.get("model") or manifest_path.parent.name
    ckpt = data.get("checkpoint") or data.get("checkpoint_dir")
    out = []
    for v in entries:
        file = v.get("file") or v.get("path")
        if not file:
            continue
        if not isinstance(file, str):
            raise PosttrainError(f"{manifest_path} lists a variant whose path is not a file name",
                                 remedy="re-run `posttrain convert`")
        # Register writes <file>.Modelfile beside each file: a manifest must not lead it elsewhere.
        path = confined(manifest_path.parent, file).resolve()
        if only is not None and path not in only:
            continue
        if not _is_file(path):
            raise PosttrainError(f"{manifest_path} lists {file}, which is missing", remedy="re-run `posttrain convert`")
        sha = v.get("sha256")
        sha = sha.removeprefix("sha256:") if isinstance(sha, str) and _SHA256.fullmatch(sha) else sha256_file(path)
        out.append(Variant(path=path, quant=str(v.get("quant") or quant_from_name(path.name) or "unknown").upper(),
                           sha256=sha,
                           model_name=str(model), checkpoint=Path(ckpt) if isinstance(ckpt, str) and ckpt else None))
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
