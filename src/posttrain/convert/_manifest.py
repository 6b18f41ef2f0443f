"""`manifest.json` of a convert output folder, and the only code that spells its name: its one writer
(`write_manifest`), convert's lenient reading of its own earlier output (to reuse what is intact),
the one strict reader for the stages after convert (`read_manifest`), and what it says posttrain wrote
there (so that nothing else is ever replaced)."""

from __future__ import annotations

import json
import re
from contextlib import suppress
from pathlib import Path

from posttrain._files import write_json_atomic
from posttrain.contracts import MANIFEST_SCHEMA, Manifest, Variant
from posttrain.errors import PosttrainError
from posttrain.paths import confined

MANIFEST = "manifest.json"


def write_manifest(out_dir: Path, doc: dict) -> Path:
    """Write (atomically) the manifest of `out_dir`; convert rewrites it as each variant is placed, so
    a crash keeps every variant made before it. Returns its path."""
    path = Path(out_dir) / MANIFEST
    write_json_atomic(path, doc)
    return path


def load_manifest(out_dir: Path) -> dict:
    """The manifest an earlier run wrote, or {} when there is none or it is not one (it is rewritten)."""
    path = out_dir / MANIFEST
    if path.is_file():
        with suppress(ValueError, RecursionError):  # not UTF-8, not JSON, absurdly nested
            doc = json.loads(path.read_bytes().decode("utf-8"))
            if isinstance(doc, dict):
                return doc
    return {}


def manifest_entries(manifest: dict, fields: set[str]) -> dict:
    """The variant entries of a manifest, keeping only those with exactly `fields` (what
    `BuiltVariant.to_json()` writes) and the right types where a later step relies on them."""
    listed = manifest.get("variants")
    if not isinstance(listed, dict):
        return {}
    return {q: e for q, e in listed.items() if isinstance(e, dict) and set(e) == fields
            and isinstance(e["path"], str) and isinstance(e["sha256"], str) and type(e["size_bytes"]) is int}


def _ours(manifest: dict, fields: set[str]) -> set[str]:
    """Names of the files in out_dir that posttrain wrote, or had started to write, by its manifest."""
    if manifest.get("schema") != MANIFEST_SCHEMA:
        return set()
    pending = manifest.get("pending")
    names = {e["path"] for e in manifest_entries(manifest, fields).values()}
    return names | ({p for p in pending if isinstance(p, str)} if isinstance(pending, list) else set())


def refuse_foreign(out_dir: Path, file_names: list[str], manifest: dict, fields: set[str]) -> None:
    """Refuse to replace a file posttrain did not write: a GGUF name its manifest does not list, or a
    manifest.json that is not posttrain's."""
    ours = _ours(manifest, fields)
    foreign = [MANIFEST] if (out_dir / MANIFEST).exists() and manifest.get("schema") != MANIFEST_SCHEMA else []
    foreign += [n for n in file_names if ((out_dir / n).exists() or (out_dir / n).is_symlink()) and n not in ours]
    if foreign:
        raise PosttrainError(f"{out_dir} already holds {', '.join(foreign)}, which posttrain did not write; "
                             "nothing was changed",
                             remedy="choose another --out, move the file away, or pass --force to replace it")


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _exists(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system: no such file either
        return False


def read_manifest(path: Path) -> Manifest:
    """The manifest convert wrote, checked field by field: its schema must be the one this posttrain
    writes (no guessing at other shapes), and every variant must name a file in the same folder that
    exists. Anything else is one PosttrainError naming the file and what is wrong."""
    remedy = "re-run `posttrain convert`, or pass the .gguf files themselves"

    def bad(what: str) -> PosttrainError:
        return PosttrainError(f"{path} {what}", remedy=remedy)

    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise PosttrainError(f"cannot read {path}: {e.strerror}", remedy=remedy) from None
    except (ValueError, RecursionError):  # not UTF-8, not JSON, absurdly nested
        raise bad("is not JSON") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema != MANIFEST_SCHEMA:
        raise bad(f"is not a manifest this posttrain reads (schema {schema!r}; expected {MANIFEST_SCHEMA})")
    model, ckpt, ckpt_sha, listed = (doc.get(k) for k in ("model_name", "checkpoint", "checkpoint_sha256", "variants"))
    if not isinstance(model, str) or not model or not isinstance(listed, dict):
        raise bad("lacks model_name or its variants")
    variants = []
    for quant, entry in listed.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and type(entry.get("size_bytes")) is int
                and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])):
            raise bad(f"has a malformed entry for {quant!r}")
        # Register writes <file>.Modelfile beside each file: a manifest must not lead it elsewhere.
        file = confined(path.parent, entry["path"]).resolve()
        if not _exists(file):
            raise bad(f"lists {entry['path']}, which is missing")
        variants.append(Variant(path=file, quant=str(quant).upper(), sha256=entry["sha256"], model_name=model,
                                size_bytes=entry["size_bytes"],
                                checkpoint=Path(ckpt) if isinstance(ckpt, str) and ckpt else None))
    return Manifest(path=path, model_name=model, checkpoint=Path(ckpt) if isinstance(ckpt, str) and ckpt else None,
                    checkpoint_sha256=ckpt_sha if isinstance(ckpt_sha, str) else None, variants=tuple(variants))

