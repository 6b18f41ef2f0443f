"""Hugging Face chat templates (Jinja) → Ollama TEMPLATE (Go text/template).

`choose_template` is what registration uses: the TEMPLATE derived from the model's own Jinja
(`_template_derive`), else one of the family templates below, each only when it renders a fixed set
of conversations exactly as the Jinja does. The family templates predate the derivation and stay as
its fallback.

Ollama renders prompts with its own Go template, not the checkpoint's Jinja. It guesses one from
the GGUF's `tokenizer.chat_template` only when it recognises it; an imported fine-tune without the
right TEMPLATE gets raw prompts and rambles. posttrain recognises the common families by their
special-token markers and writes the Go template that produces the same turns. The templates use
Ollama's `.Messages` (chat) with a `.Prompt` fallback (generate), and put `.System` where the
family's own template puts a system prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.serve._render_check import Tokens, check_template
from posttrain.serve._template_derive import derive_template


@dataclass(frozen=True)
class ChatFamily:
    name: str
    template: str
    stop: tuple[str, ...]


CHATML = ChatFamily(
    "chatml",
    """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- if .Messages }}
{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
{{ else }}
{{- if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}""",
    ("<|im_start|>", "<|im_end|>"),
)

LLAMA3 = ChatFamily(
    "llama3",
    """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- if .Messages }}
{{- range .Messages }}{{ if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>

{{ else }}
{{- if .Prompt }}<|start_header_id|>user<|end_header_id|>

{{ .Prompt }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}{{ .Response }}{{ if .Response }}<|eot_id|>{{ end }}""",
    ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
)

# Gemma has no system role: its template folds the system prompt into the first user turn.
GEMMA = ChatFamily(
    "gemma",
    """{{- $system := .System }}
{{- if .Messages }}
{{- range .Messages }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- end }}<start_of_turn>model
{{ else }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ end }}{{ .Prompt }}<end_of_turn>
<start_of_turn>model
{{ end }}{{ .Response }}{{ if .Response }}<end_of_turn>{{ end }}""",
    ("<start_of_turn>", "<end_of_turn>"),
)

# Mistral's instruct template puts the system prompt in front of the last user message.
MISTRAL = ChatFamily(
    "mistral",
    """{{- if .Messages }}
{{- range $i, $_ := .Messages }}
{{- if eq .Role "user" }}[INST] {{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>
{{- end }}
{{- end }}
{{- else }}[INST] {{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}[/INST]{{ if .Response }} {{ .Response }}</s>{{ end }}
{{- end }}""",
    ("[INST]", "[/INST]"),
)

PHI3 = ChatFamily(
    "phi3",
    """{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}
{{- if .Messages }}
{{- range .Messages }}{{ if ne .Role "system" }}<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ end }}{{ end }}<|assistant|>
{{ else }}
{{- if .Prompt }}<|user|>
{{ .Prompt }}<|end|>
{{ end }}<|assistant|>
{{ end }}{{ .Response }}{{ if .Response }}<|end|>{{ end }}""",
    ("<|end|>", "<|user|>", "<|assistant|>", "<|system|>"),
)

FAMILIES = (CHATML, LLAMA3, GEMMA, MISTRAL, PHI3)


def detect_family(chat_template: str | None) -> ChatFamily | None:
    """The family whose turn markers the Jinja chat template uses, or None when unknown.

    Checked most specific first: a Llama 2 template (`[INST]` with `<<SYS>>`) is not Mistral's and
    Zephyr's `<|user|>…</s>` is not Phi-3's `<|user|>…<|end|>`, so both stay unknown.
    """
    if not chat_template:
        return None
    t = chat_template
    if "<|start_header_id|>" in t and "<|eot_id|>" in t:
        return LLAMA3
    if "<|im_start|>" in t and "<|im_end|>" in t:
        return CHATML
    if "<start_of_turn>" in t and "<end_of_turn>" in t:
        return GEMMA
    if "<|end|>" in t and ("<|user|>" in t or "<|assistant|>" in t):  # roles may be built as '<|' + role + '|>'
        return PHI3
    if "[INST]" in t and "[/INST]" in t and "<<SYS>>" not in t:
        return MISTRAL
    return None


def chat_template_from_checkpoint(checkpoint_dir: Path) -> str | None:
    """The checkpoint's chat template: `chat_template.jinja` (transformers ≥ 4.43 writes it) or
    `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates: "default")."""
    jinja = checkpoint_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = checkpoint_dir / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        doc = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    value = doc.get("chat_template") if isinstance(doc, dict) else None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default") or next(iter(named.values()), None)
    return value if isinstance(value, str) else None


@dataclass
class TemplateChoice:
    """The TEMPLATE registration writes (None: none, Ollama falls back to its own guess) and why."""

    template: str | None
    source: str | None  # "derived" (from the model's Jinja) or a family name; None when not set
    stop: tuple[str, ...] = ()
    system: str | None = None  # the Jinja's default system prompt, written as SYSTEM
    warnings: list[str] = field(default_factory=list)


_SYSTEM_NOTES = {
    "dropped": "the model's chat template ignores system messages, so a system prompt has no effect",
    "refused": "the model's chat template refuses system messages, so the TEMPLATE shows none",
}


def choose_template(chat_template: str | None, tokens: Tokens) -> TemplateChoice:
    """The TEMPLATE for a model: derived from its Jinja, else a known family's, each written only when
    it renders the fixed conversations exactly as the Jinja does (`_render_check`)."""
    if not chat_template:
        return TemplateChoice(None, None, warnings=["template not set: the model has no chat template, "
                                                    "Ollama will guess from the GGUF"])
    derived = derive_template(chat_template, tokens)
    if derived.template is not None:
        notes = [_SYSTEM_NOTES[derived.system_placement]] if derived.system_placement in _SYSTEM_NOTES else []
        return TemplateChoice(derived.template, "derived", derived.stop, derived.system, notes)
    family = detect_family(chat_template) if derived.kind != "refused" else None
    if family is not None and all(c.equal for c in check_template(family.template, chat_template, tokens, None)):
        return TemplateChoice(family.template, family.name, family.stop)
    return TemplateChoice(None, None, warnings=[f"template not set: {derived.reason}"])
