"""The GGUF variants to serve or register: from the convert stage's `manifest.json`, else the files."""

from __future__ import annotations

import re
from pathlib import Path

from posttrain._files import sha256_file
from posttrain.contracts import Variant
from posttrain.convert import read_manifest
from posttrain.errors import PosttrainError
from posttrain.serve._render_check import Tokens


def gguf_metadata(path: Path) -> dict[str, str]:
    """The GGUF's key/value header as llama.cpp reads it (vocabulary only: fast, no weights)."""
    return gguf_header(path)[0]


def gguf_header(path: Path) -> tuple[dict[str, str], Tokens]:
    """The GGUF's key/value header and its special tokens, as llama.cpp reads them (vocabulary only)."""
    from posttrain import llamacpp

    with llamacpp.open_vocab(path) as model:
        vocab = model._model  # llama-cpp-python's vocabulary wrapper: the only place it exposes EOT and add_bos

        def text(token: int) -> str:
            return vocab.token_get_text(token) if token >= 0 else ""

        eos = text(vocab.token_eos())
        eot = text(vocab.token_eot())
        tokens = Tokens(bos=text(vocab.token_bos()), eos=eos, eot="" if eot == eos else eot,
                        add_bos=bool(vocab.add_bos_token()))
        return dict(model.metadata), tokens


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
    listed = read_manifest(manifest_path).variants
    return [v for v in listed if only is None or v.path in only]


def _from_file(path: Path) -> Variant:
    quant = quant_from_name(path.name)
    if quant is None:
        file_type = gguf_metadata(path).get("general.file_type")
        quant = _ftype_names().get(int(file_type), "unknown") if file_type and file_type.isdigit() else "unknown"
    # The path as given, a symlink not resolved: the Modelfile goes beside the name the user gave, and
    # its FROM names that file, never a folder the link happens to point into.
    return Variant(path=path.absolute(), quant=quant, sha256=sha256_file(path),
                   model_name=_model_name_from_file(path, quant), size_bytes=path.stat().st_size)


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
