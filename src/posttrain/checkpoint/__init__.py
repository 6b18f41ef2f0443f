"""Is this directory a finished Hugging Face checkpoint? The one test the watcher and `run` share.

A trainer writes config, tokenizer and safetensors shards one after another, and a shard grows for
seconds to minutes. A checkpoint counts as complete only when every piece is present, every shard
is exactly as long as its own header says, and nothing changed during a short settle window.

A PEFT adapter folder (adapter_config.json, adapter_model.safetensors) is a checkpoint too: its
detection lives here, beside that of full weights, and resolves the base it goes onto. What is done
with an adapter (merged by PEFT, or written as a GGUF LoRA) is `posttrain.lora`'s.

    verdict = inspect_checkpoint("out/final_model")          # a Verdict, or an AdapterVerdict
    verdict = inspect_adapter("out/final_model", base="Llama-3.2-1B")
"""

from posttrain._files import human_bytes  # re-exported: the CLI formats sizes with it
from posttrain.checkpoint._adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterVerdict,
    inspect_adapter,
    is_adapter_dir,
    tokenizer_source,
)
from posttrain.checkpoint._dtype import checkpoint_dtype
from posttrain.checkpoint._full import TOKENIZER_SETS, Verdict, checkpoint_sha256
from posttrain.checkpoint._inspect import inspect_checkpoint
from posttrain.checkpoint._read import safetensors_expected_size, tensor_sizes

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "TOKENIZER_SETS",
    "AdapterVerdict",
    "Verdict",
    "checkpoint_dtype",
    "checkpoint_sha256",
    "human_bytes",
    "inspect_adapter",
    "inspect_checkpoint",
    "is_adapter_dir",
    "safetensors_expected_size",
    "tensor_sizes",
    "tokenizer_source",
]
