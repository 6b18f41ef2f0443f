"""`manifest.json` of a convert output folder: reading it back strictly, and what it says posttrain
wrote there (so that nothing else is ever replaced)."""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path

from posttrain.contracts import MANIFEST_SCHEMA
from posttrain.errors import PosttrainError

MANIFEST = "manifest.json"


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
    `Variant.to_json()` writes) and the right types where a later step relies on them."""
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
