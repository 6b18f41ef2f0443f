"""GGUF output types by their usual llama.cpp names, and which tool makes each."""

from __future__ import annotations

import difflib

from posttrain.errors import PosttrainError

# The converter writes these directly from the HF weights; everything else is quantized from F16.
CONVERTER_TYPES = ("F32", "F16", "BF16", "Q8_0")
# Types llama-quantize refuses without an importance matrix.
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S"}


def quantizer_types() -> dict[str, int]:
    """Every LLAMA_FTYPE_MOSTLY_* type the installed llama.cpp knows, by name (Q4_K_M → ftype)."""
    import llama_cpp

    prefix = "LLAMA_FTYPE_MOSTLY_"
    return {name[len(prefix):]: getattr(llama_cpp, name) for name in dir(llama_cpp) if name.startswith(prefix)}


def canonical(name: str) -> str:
    """'q4_k_m' → 'Q4_K_M'; raises a PosttrainError with close matches for an unknown type."""
    wanted = name.strip().upper().replace("-", "_")
    known = set(CONVERTER_TYPES) | set(quantizer_types())
    if wanted in known:
        return wanted
    close = difflib.get_close_matches(wanted, sorted(known), n=3)
    hint = f"did you mean {', '.join(c.lower() for c in close)}?" if close else \
        f"known types: {', '.join(sorted(k.lower() for k in known))}"
    raise PosttrainError(f"unknown GGUF type {name!r}", remedy=hint)


def parse_quant_list(spec: str | list[str]) -> list[str]:
    """'f16,q8_0,q4_k_m' → ['F16', 'Q8_0', 'Q4_K_M'], F16 first (it is the source and the reference)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        if item.strip():
            q = canonical(item)
            if q not in out:
                out.append(q)
    if "F16" in out:
        out.remove("F16")
    return ["F16", *out]


def is_k_quant(quant: str) -> bool:
    return "_K" in quant or quant.startswith("IQ")
