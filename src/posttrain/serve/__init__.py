"""Serve and register GGUF variants: llama.cpp's OpenAI-compatible server, and Ollama import."""

from posttrain.serve._chat_templates import (
    FAMILIES,
    ChatFamily,
    chat_template_from_checkpoint,
    detect_family,
)
from posttrain.serve._llamacpp_server import LlamaServer
from posttrain.serve._modelfile import DEFAULT_PARAMETERS, render_modelfile
from posttrain.serve._names import full_name, sanitize_part, variant_name
from posttrain.serve._ollama import (
    DEFAULT_URL,
    Registration,
    register_variants,
    resolve_ollama_gguf,
    unregister,
)
from posttrain.contracts import Variant
from posttrain.serve._variants import discover_variants

__all__ = [
    "DEFAULT_PARAMETERS",
    "DEFAULT_URL",
    "FAMILIES",
    "ChatFamily",
    "LlamaServer",
    "Registration",
    "Variant",
    "chat_template_from_checkpoint",
    "detect_family",
    "discover_variants",
    "full_name",
    "register_variants",
    "render_modelfile",
    "resolve_ollama_gguf",
    "sanitize_part",
    "unregister",
    "variant_name",
]
