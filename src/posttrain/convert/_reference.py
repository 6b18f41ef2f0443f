"""Which 16-bit GGUF stands for the model in a run's evaluations (its reference): F16 or BF16.

A run evaluates its reference beside each quantization, and on a CPU those evaluations are most of
its time. On CPUs with AVX512_BF16 llama.cpp multiplies BF16 natively, and the machine profile
(`llamacpp.ensure_profile`) times both types on a probe model. BF16 becomes the reference where it
is the faster one and the checkpoint allows it:

- a bfloat16 checkpoint: BF16 holds exactly its weights (F16 rounds them, and overflows beyond 65,504);
- a float16, float32 or unknown one: only where BF16 agrees with F16 on at least 99.5 % of the next
  tokens of convert's probe text (`_verify`: BF16 is checked against F16 there like every variant).

F16 is made in every case: it is the quantizer's source and the reference of convert's check, so
the quantizations and their KL divergences do not depend on this choice. `reference = f16 | bf16`
in posttrain.toml decides it outright; `POSTTRAIN_REFERENCE_TYPE` overrides only which type the
machine counts as faster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from posttrain.contracts import ReferenceChoice, Variant
from posttrain.convert._built import BuiltVariant
from posttrain.convert._convert import ConvertResult
from posttrain.convert._quant_types import parse_quant_list
from posttrain.errors import PosttrainError

log = logging.getLogger("posttrain.convert")

AGREEMENT_FLOOR = 0.995  # BF16's top-1 agreement with F16 needed to stand for a float16/float32 checkpoint
REFERENCE_MODES = ("auto", "f16", "bf16")


@dataclass(frozen=True)
class ReferencePlan:
    """What is known before converting: the mode, the checkpoint's type, and which type is faster here."""

    mode: str  # "auto", "f16" or "bf16"
    checkpoint_dtype: str | None
    faster: str  # "F16" or "BF16" on this CPU, as far as posttrain knows
    why_faster: str  # where that comes from, for the report's sentence
    speedup: float | None = None  # BF16's probe throughput over F16's, from the machine profile

    @property
    def makes_bf16(self) -> bool:
        """BF16 is converted beside F16: it may become the reference."""
        return self.mode == "bf16" or (self.mode == "auto" and self.faster == "BF16")


def plan_reference(mode: str = "auto", checkpoint_dtype: str | None = None,
                   say: Callable[[str], None] | None = None) -> ReferencePlan:
    """The plan for a checkpoint of `checkpoint_dtype`. In "auto", this machine's profile is measured
    first if it has none yet (about half a minute, once per CPU and llama.cpp build; `say` names it)."""
    mode = (mode or "auto").strip().lower()
    if mode not in REFERENCE_MODES:
        raise PosttrainError(f"unknown reference {mode!r}", remedy=f"use one of {', '.join(REFERENCE_MODES)}")
    if mode != "auto":
        return ReferencePlan(mode, checkpoint_dtype, mode.upper(), "set in the configuration")
    faster, why, speedup = _faster_here(say)
    return ReferencePlan(mode, checkpoint_dtype, faster, why, speedup)


def _faster_here(say: Callable[[str], None] | None) -> tuple[str, str, float | None]:
    import os

    from posttrain import llamacpp

    forced = os.environ.get(llamacpp.REFERENCE_ENV, "").strip().upper()
    profile = llamacpp.ensure_profile(say=say) if forced not in ("F16", "BF16") else None
    faster = llamacpp.reference_type()  # the environment, else the profile, else F16
    if forced in ("F16", "BF16"):
        return faster, f"{llamacpp.REFERENCE_ENV}={forced}", None
    if profile is None:
        return faster, "no machine profile (POSTTRAIN_MACHINE_PROFILE=0)", None
    speedup = profile.speedup("BF16")
    if speedup is None:
        return faster, f"the machine profile could not time BF16 ({profile.fallback or 'not measured'})", None
    return faster, f"the machine profile: BF16 runs {speedup:.2f}x as fast as F16 on this CPU", speedup


def agreement_of(variants: Sequence[BuiltVariant]) -> tuple[float, int] | None:
    """BF16's top-1 agreement with F16 on the probe text and the positions it counted, where convert
    checked BF16 against F16; else None."""
    bf16 = next((v for v in variants if v.quant == "BF16"), None)
    check = (bf16.verification or {}).get("vs_f16") if bf16 else None
    if not isinstance(check, dict) or check.get("top1_agreement") is None:
        return None
    return float(check["top1_agreement"]), int(check.get("n_positions") or 0)


def settle_reference(plan: ReferencePlan, variants: Sequence[BuiltVariant],
                     bf16_failed: str | None = None) -> ReferenceChoice:
    """The reference, once the variants are made and checked, with the sentence that says why.
    `bf16_failed`: why BF16, only tried, could not be made (the run went on without it)."""
    measured = agreement_of(variants)
    agreement = measured[0] if measured else None
    dtype = plan.checkpoint_dtype

    def choice(quant: str, reason: str) -> ReferenceChoice:
        return ReferenceChoice(quant=quant, reason=reason, checkpoint_dtype=dtype, agreement=agreement,
                               speedup=plan.speedup)

    if bf16_failed is not None:
        return choice("F16", f"BF16 could not be made ({bf16_failed})")
    if plan.mode != "auto":
        return choice(plan.faster, f"reference = {plan.mode} in posttrain.toml")
    if plan.faster == "F16":
        return choice("F16", f"F16 is the faster type here ({plan.why_faster})")
    if dtype == "bfloat16":
        return choice("BF16", f"the checkpoint is bfloat16, so BF16 holds its exact weights, and BF16 is the "
                              f"faster type here ({plan.why_faster})")
    kind = f"a {dtype} checkpoint" if dtype else "a checkpoint of unknown type"
    if measured is None:
        return choice("F16", f"BF16 is faster here ({plan.why_faster}), but for {kind} it must agree with F16 "
                             f"on the probe text, and convert's check did not run")
    share, positions = measured
    told = f"on {share * 100:.2f} % of {positions} probe-text tokens"
    if share >= AGREEMENT_FLOOR:
        return choice("BF16", f"BF16 is faster here ({plan.why_faster}) and, for {kind}, agrees with F16's next "
                              f"token {told} (at least {AGREEMENT_FLOOR * 100:g} % needed)")
    return choice("F16", f"BF16 is faster here ({plan.why_faster}), but for {kind} it agrees with F16's next "
                         f"token only {told} (below {AGREEMENT_FLOOR * 100:g} %)")


def evaluated_quants(listed: Sequence[str], reference: str) -> list[str]:
    """The types a run evaluates: its list (F16 first, as `parse_quant_list` gives it) with F16 standing
    for the reference. A BF16 made only to be tried is not evaluated when F16 stays the reference; a
    type the list names itself always is."""
    out: list[str] = []
    for quant in listed:
        quant = reference if quant == "F16" else quant
        if quant not in out:
            out.append(quant)
    return out


@dataclass(frozen=True)
class ReferencedConversion:
    """A conversion with its reference chosen: `variants` are what the stages after convert take (the
    reference in F16's place); `result` holds every file made, F16 and a BF16 only tried included."""

    result: ConvertResult
    reference: ReferenceChoice
    variants: tuple[Variant, ...]


def convert_with_reference(convert: Callable[[list[str]], ConvertResult], plan: ReferencePlan,
                           quants: str | Sequence[str]) -> ReferencedConversion:
    """`convert(types)` of the listed `quants`, with BF16 beside them where the plan tries it, then the
    choice. BF16 is only tried: where it cannot be made, the listed types are converted as they would
    have been (what was made is reused; a failure of theirs fails again, with its own error)."""
    listed = parse_quant_list(list(quants) if not isinstance(quants, str) else quants)
    made = [*listed, "BF16"] if plan.makes_bf16 and "BF16" not in listed else listed
    bf16_failed = None
    try:
        result = convert(made)
    except PosttrainError as e:
        if made == listed:
            raise
        bf16_failed = e.one_line()
        log.warning("BF16 could not be made, F16 stays the reference: %s", bf16_failed)
        result = convert(listed)
    reference = settle_reference(plan, result.variants, bf16_failed=bf16_failed)
    evaluated = evaluated_quants(listed, reference.quant)
    handed = sorted((v for v in result.handover() if v.quant in evaluated), key=lambda v: evaluated.index(v.quant))
    return ReferencedConversion(result, reference, tuple(handed))


def base_reference(mode: str, checkpoint: Path) -> str:
    """The GGUF type of a baseline checkpoint, and of an adapter's base (by default the same model,
    converted once): BF16 where it is bfloat16 and BF16 is the faster type here (its exact weights, as
    for a run's own reference), or where the configuration asks for BF16; else F16. No agreement is
    measured for these: F16 is what they were always converted to."""
    from posttrain.checkpoint import checkpoint_dtype

    dtype = checkpoint_dtype(checkpoint)
    plan = plan_reference(mode, dtype)
    return "BF16" if plan.mode == "bf16" or (plan.makes_bf16 and dtype == "bfloat16") else "F16"
