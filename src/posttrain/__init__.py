"""posttrain: the chores after fine-tuning, done unattended.

Detect a finished Hugging Face checkpoint, convert it to GGUF and quantize it with llama.cpp's own
tools, serve and register it, evaluate it with lm-evaluation-harness, compare it against a baseline
with paired statistics, and report.
"""

# First, before anything can import numpy or torch: a CUDA build of llama.cpp segfaults at model load
# when they were loaded before it (see posttrain.llamacpp._loading). It also makes every load AMX-safe.
# The package's own __init__ imports only the loading module eagerly, so this stays cheap.
from posttrain.llamacpp import load_llama_cpp

load_llama_cpp(required=False)

from importlib.metadata import PackageNotFoundError, version  # noqa: E402

try:
    __version__ = version("posttrain")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

from posttrain.checkpoint import Verdict, checkpoint_sha256, inspect_checkpoint
from posttrain.errors import CheckpointIncomplete, PosttrainError, TransientError
from posttrain.store import Store
from posttrain.tiny import make_tiny

__all__ = [
    "CheckpointIncomplete",
    "PosttrainError",
    "Store",
    "TransientError",
    "Verdict",
    "__version__",
    "checkpoint_sha256",
    "inspect_checkpoint",
    "make_tiny",
]
