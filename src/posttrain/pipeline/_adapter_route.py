"""What the pipeline does differently for a LoRA adapter checkpoint, kept out of the stage list.

The adapter is built both ways: merged into its base by PEFT (then converted and quantized like any
checkpoint), and as a GGUF LoRA that llama.cpp applies to the base's 16-bit GGUF at run time (F16, or
BF16 for a bfloat16 base where this CPU runs BF16 faster: the base's own reference). Both are
evaluated against the base, which is the default baseline: "did my fine-tune help?".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from posttrain.checkpoint import AdapterVerdict, Verdict, inspect_adapter
from posttrain.contracts import AdapterFacts, AdapterRoute, AdapterRoutes

# The label suffix of a QLoRA's second route: the base quantized to 4 bits + the same LoRA (near the
# 4-bit base the adapter was trained against). The first route's is `AdapterRoute.label` (F16+LoRA).
QLORA_ROUTE = "Q4_K_M+LoRA"


def adapter_facts(verdict: Verdict) -> AdapterFacts | None:
    """The detect step's record of an adapter (None for full weights): the base, the routes, QLoRA."""
    if not isinstance(verdict, AdapterVerdict):
        return None
    return AdapterFacts(base=str(verdict.base), base_ref=verdict.base_ref, peft_type=verdict.peft_type,
                        rank=verdict.rank, lora_alpha=verdict.lora_alpha,
                        target_modules=tuple(verdict.target_modules), qlora=verdict.qlora,
                        routes=tuple(verdict.routes), route_note=verdict.route_note)


def default_baseline(verdict: Verdict, baseline: str | None) -> str | None:
    """The baseline a run compares with: the one given, else an adapter's base model."""
    facts = adapter_facts(verdict)
    return baseline or (facts.base if facts else None)


def build_routes(checkpoint: str | Path, base: Path | None, adapter_sha256: str, run_dir: Path,
                 gguf_dir: Path, model_name: str,
                 base_gguf: Callable[[list[str]], dict[str, Path]], base_type: str = "F16") -> AdapterRoutes:
    """Merge the adapter (into `run_dir/merged`) and, when llama.cpp can write it, its GGUF LoRA beside
    the base's GGUF (`base_gguf(quants)` converts the base, reused by content like the baseline's, and
    returns {quant: path}; `base_type` (F16 or BF16), plus Q4_K_M for a QLoRA)."""
    from posttrain._files import sha256_file
    from posttrain.lora import convert_adapter, merge_adapter

    verdict = inspect_adapter(checkpoint, base=base)
    merged = merge_adapter(verdict, Path(run_dir) / "merged", adapter_sha256=adapter_sha256)
    if "adapter" not in verdict.routes:
        return AdapterRoutes(merged=Path(merged), adapter_note=verdict.route_note)
    bases = base_gguf([base_type, "Q4_K_M"] if verdict.qlora else [base_type])
    lora = convert_adapter(verdict, Path(gguf_dir) / f"{model_name}-lora-F16.gguf", adapter_sha256=adapter_sha256)
    route = AdapterRoute(base_gguf=Path(bases[base_type]), base_sha256=sha256_file(bases[base_type]), lora=Path(lora),
                         lora_sha256=sha256_file(lora), size_bytes=Path(lora).stat().st_size,
                         base_4bit_gguf=Path(bases["Q4_K_M"]) if "Q4_K_M" in bases else None, base_type=base_type)
    return AdapterRoutes(merged=Path(merged), adapter=route, adapter_note=verdict.route_note)
