"""What convert made of one variant: its own module, so that the helpers that make variants (the
remote quantizer, the verifier, the imatrix twins) take the type without importing the orchestrator
`_convert.py`, which imports them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class BuiltVariant:
    """How convert made one variant (timings, header, checks): what the manifest entry holds. The
    stages after convert get the plain `contracts.Variant` (`ConvertResult.handover()`)."""

    quant: str
    path: Path
    sha256: str
    size_bytes: int
    seconds: float
    made_by: str
    cached: bool = False
    header: dict = field(default_factory=dict)
    verification: dict = field(default_factory=dict)

    @property
    def kld_vs_f16(self) -> float | None:
        return self.verification.get("vs_f16", {}).get("mean_kld")

    @property
    def top1_vs_f16(self) -> float | None:
        return self.verification.get("vs_f16", {}).get("top1_agreement")

    @property
    def fallbacks(self) -> dict[str, int]:
        return self.header.get("fallback_types", {})

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = self.path.name
        d.pop("cached")
        return d
