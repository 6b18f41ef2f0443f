"""The merge route: PEFT folds the adapter into the base, on CPU, in the base's own dtype.

The base is loaded once (in its stored dtype, not float32) and PEFT merges each LoRA pair into its
weight in place, so memory stays near one copy of the base. The merged checkpoint is written into a
hidden sibling folder and renamed into place when complete: a killed merge leaves no folder under
the final name. A marker records which adapter (and base) it came from, so a rerun reuses it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from posttrain._files import write_json_atomic
from posttrain.checkpoint import (
    AdapterVerdict,
    checkpoint_sha256,
    inspect_adapter,
    inspect_checkpoint,
    tokenizer_source,
)
from posttrain.errors import CheckpointIncomplete, PosttrainError

log = logging.getLogger("posttrain.lora")

MERGE_MARKER = ".posttrain-merge.json"
_SHARD_SIZE = "200MB"
# Tokenizer files carried into the merged checkpoint, from the adapter's folder when it has them.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json",
                    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")


def _marker(out_dir: Path) -> dict | None:
    try:
        doc = json.loads((out_dir / MERGE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _reusable(out_dir: Path, adapter_sha: str) -> bool:
    marker = _marker(out_dir)
    return bool(marker and marker.get("adapter_sha256") == adapter_sha
                and inspect_checkpoint(out_dir, settle_seconds=0).complete)


def merged_is_current(out_dir: str | Path, adapter_sha256: str) -> bool:
    """Whether `out_dir` holds the complete merge of the adapter with this content hash."""
    return _reusable(Path(out_dir), adapter_sha256)


def _merge_into(verdict: AdapterVerdict, staging: Path) -> str:
    """Load, merge, save into `staging`; the dtype the merge ran in."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # dtype="auto": the dtype the base was saved in (bf16/fp16 stay 2 bytes a weight).
    model = AutoModelForCausalLM.from_pretrained(verdict.base, dtype="auto", device_map="cpu",
                                                 trust_remote_code=False)
    dtype = str(model.dtype).removeprefix("torch.")
    with torch.inference_mode():
        peft_model = PeftModel.from_pretrained(model, verdict.path, is_trainable=False)
        merged = peft_model.merge_and_unload(safe_merge=True)
    # Small shards: safetensors serializes a whole shard in memory before writing it.
    merged.save_pretrained(staging, safe_serialization=True, max_shard_size=_SHARD_SIZE)
    del merged, peft_model, model
    source = tokenizer_source(verdict)
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, staging / name)
    return dtype


def merge_adapter(adapter: str | Path | AdapterVerdict, out_dir: str | Path, *, base: str | Path | None = None,
                  adapter_sha256: str | None = None, force: bool = False) -> Path:
    """Merge the adapter into its base and write a full checkpoint to `out_dir`; returns `out_dir`.

    Reuses `out_dir` when it already holds this merge. A folder there that posttrain did not write
    (no merge marker) is refused unless `force`."""
    verdict = adapter if isinstance(adapter, AdapterVerdict) else inspect_adapter(adapter, base=base)
    if not verdict.complete:
        raise CheckpointIncomplete(f"{verdict.path} is not a complete adapter: {verdict.reason}",
                                   remedy=verdict.remedy or "wait for training to finish, or `posttrain check` it")
    if "merge" not in verdict.routes:
        raise PosttrainError(f"{verdict.path}: PEFT cannot merge a {verdict.peft_type} adapter")
    out_dir = Path(out_dir)
    sha = adapter_sha256 or checkpoint_sha256(verdict)
    if out_dir.exists():
        if _reusable(out_dir, sha):
            log.info("reusing the merged checkpoint %s", out_dir)
            return out_dir
        if _marker(out_dir) is None and not force and any(out_dir.iterdir()):
            raise PosttrainError(f"{out_dir} exists and was not written by posttrain's merge",
                                 remedy="choose another output folder, or pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.merging-"))
    try:
        staging.chmod(0o755)  # mkdtemp makes 0700; a checkpoint folder is meant to be read by others
        try:
            dtype = _merge_into(verdict, staging)
        except (RuntimeError, ValueError, KeyError) as e:  # PEFT/torch refusing the pair: shapes, names
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise PosttrainError(f"PEFT could not merge {verdict.path} into {verdict.base}: {first}",
                                 remedy="pass --base DIR with the model this adapter was trained on") from None
        write_json_atomic(staging / MERGE_MARKER, {
            "adapter": str(verdict.path), "adapter_sha256": sha, "base": str(verdict.base), "dtype": dtype,
            "peft_type": verdict.peft_type, "rank": verdict.rank, "lora_alpha": verdict.lora_alpha,
            "qlora": verdict.qlora})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir
