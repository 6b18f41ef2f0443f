"""LoRA / QLoRA adapter checkpoints: the merge route and the GGUF adapter route.

    verdict = inspect_adapter("out/final_model", base="Llama-3.2-1B")   # posttrain.checkpoint's
    merged = merge_adapter(verdict, "gguf/x/merged")       # full HF checkpoint → the usual convert
    lora = convert_adapter(verdict, "gguf/x/x-lora-F16.gguf")  # applied to the base GGUF at run time

Detecting an adapter folder and resolving its base is `posttrain.checkpoint`'s (`inspect_adapter`,
`AdapterVerdict`, `is_adapter_dir`, `tokenizer_source`): an adapter is a kind of checkpoint.
PEFT is an optional extra (`pip install 'posttrain[lora]'`); only merging needs it.
"""

from posttrain.lora._gguf import convert_adapter
from posttrain.lora._merge import merge_adapter, merged_is_current

__all__ = [
    "convert_adapter",
    "merge_adapter",
    "merged_is_current",
]
