"""HF checkpoint → GGUF with llama.cpp's official converter and quantizer, every file verified."""

from posttrain._files import sha256_file
from posttrain.convert._built import BuiltVariant
from posttrain.convert._convert import (
    MANIFEST,
    ConvertResult,
    convert_checkpoint,
    default_model_name,
)
from posttrain.convert._imatrix import DEFAULT_MAX_CHUNKS as IMATRIX_MAX_CHUNKS
from posttrain.convert._imatrix import SUFFIX as IMATRIX_SUFFIX
from posttrain.convert._imatrix import Imatrix, compute_imatrix, takes_imatrix
from posttrain.convert._imatrix_variants import make_imatrix_variants
from posttrain.convert._manifest import load_manifest, read_manifest
from posttrain.convert._quant_types import (
    NEEDS_IMATRIX,
    canonical,
    parse_quant_list,
    quantizer_types,
)
from posttrain.convert._reference import (
    AGREEMENT_FLOOR,
    REFERENCE_MODES,
    ReferencedConversion,
    ReferencePlan,
    base_reference,
    convert_with_reference,
    evaluated_quants,
    plan_reference,
    settle_reference,
)
from posttrain.convert._remote import quantizing_executor

__all__ = [
    "AGREEMENT_FLOOR",
    "MANIFEST",
    "REFERENCE_MODES",
    "ReferencePlan",
    "ReferencedConversion",
    "base_reference",
    "convert_with_reference",
    "evaluated_quants",
    "plan_reference",
    "settle_reference",
    "BuiltVariant",
    "ConvertResult",
    "IMATRIX_MAX_CHUNKS",
    "IMATRIX_SUFFIX",
    "Imatrix",
    "NEEDS_IMATRIX",
    "compute_imatrix",
    "make_imatrix_variants",
    "takes_imatrix",
    "load_manifest",
    "read_manifest",
    "canonical",
    "convert_checkpoint",
    "default_model_name",
    "parse_quant_list",
    "quantizer_types",
    "quantizing_executor",
    "sha256_file",
]
