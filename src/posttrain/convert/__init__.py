"""HF checkpoint → GGUF with llama.cpp's official converter and quantizer, every file verified."""

from posttrain._files import sha256_file
from posttrain.convert._built import BuiltVariant
from posttrain.convert._convert import (
    MANIFEST,
    ConvertResult,
    convert_checkpoint,
    default_model_name,
)
from posttrain.convert._imatrix import Imatrix, compute_imatrix, takes_imatrix
from posttrain.convert._imatrix_variants import make_imatrix_variants
from posttrain.convert._manifest import read_manifest
from posttrain.convert._quant_types import canonical, parse_quant_list, quantizer_types

__all__ = [
    "MANIFEST",
    "BuiltVariant",
    "ConvertResult",
    "Imatrix",
    "compute_imatrix",
    "make_imatrix_variants",
    "takes_imatrix",
    "read_manifest",
    "canonical",
    "convert_checkpoint",
    "default_model_name",
    "parse_quant_list",
    "quantizer_types",
    "sha256_file",
]
