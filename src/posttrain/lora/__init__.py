"""LoRA / QLoRA adapter checkpoints: detection, the merge route and the GGUF adapter route.

    verdict = inspect_adapter("out/final_model", base="Llama-3.2-1B")   # or inspect_checkpoint(...)
    merged = merge_adapter(verdict, "gguf/x/merged")       # full HF checkpoint → the usual convert
    lora = convert_adapter(verdict, "gguf/x/x-lora-F16.gguf")  # applied to the base GGUF at run time

PEFT is an optional extra (`pip install 'posttrain[lora]'`); only merging needs it.
"""

from posttrain.lora._detect import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterVerdict,
    inspect_adapter,
    is_adapter_dir,
    tokenizer_source,
)
from posttrain.lora._gguf import convert_adapter
from posttrain.lora._merge import merge_adapter, merged_is_current

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterVerdict",
    "convert_adapter",
    "inspect_adapter",
    "is_adapter_dir",
    "merge_adapter",
    "merged_is_current",
    "tokenizer_source",
]
