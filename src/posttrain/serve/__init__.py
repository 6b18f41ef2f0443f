"""Serve and register GGUF variants: llama.cpp's OpenAI-compatible server, and Ollama import."""

from posttrain.serve._chat_templates import (
    FAMILIES,
    ChatFamily,
    TemplateChoice,
    chat_template_from_checkpoint,
    choose_template,
    detect_family,
    ollama_prefers_gguf_template,
)
from posttrain.serve._gotemplate import GoTemplateError
from posttrain.serve._gotemplate import execute as execute_go_template
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
from posttrain.serve._render_check import CONVERSATIONS, Tokens, check_template
from posttrain.serve._template_derive import TemplateResult, derive_template
from posttrain.serve._variants import discover_variants, gguf_header

__all__ = [
    "CONVERSATIONS",
    "DEFAULT_PARAMETERS",
    "DEFAULT_URL",
    "FAMILIES",
    "ChatFamily",
    "GoTemplateError",
    "LlamaServer",
    "Registration",
    "TemplateChoice",
    "TemplateResult",
    "Tokens",
    "Variant",
    "chat_template_from_checkpoint",
    "check_template",
    "choose_template",
    "derive_template",
    "detect_family",
    "discover_variants",
    "execute_go_template",
    "full_name",
    "gguf_header",
    "ollama_prefers_gguf_template",
    "register_variants",
    "render_modelfile",
    "resolve_ollama_gguf",
    "sanitize_part",
    "unregister",
    "variant_name",
]
