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


def _tokenizer_config(checkpoint_dir: Path) -> dict | None:
    config = checkpoint_dir / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        doc = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def tokens_from_checkpoint(checkpoint_dir: Path) -> Tokens | None:
    """BOS/EOS as `tokenizer_config.json` names them (a string, or an AddedToken dict's `content`)."""
    doc = _tokenizer_config(checkpoint_dir)
    if doc is None:
        return None

    def text(key: str) -> str:
        value = doc.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        return value if isinstance(value, str) else ""

    add_bos = doc.get("add_bos_token")
    return Tokens(bos=text("bos_token"), eos=text("eos_token"),
                  add_bos=add_bos if isinstance(add_bos, bool) else bool(text("bos_token")))


def chat_template_from_checkpoint(checkpoint_dir: Path) -> str | None:
    """The checkpoint's chat template: `chat_template.jinja` (transformers ≥ 4.43 writes it) or
    `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates: "default")."""
    jinja = checkpoint_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    doc = _tokenizer_config(checkpoint_dir)
    value = doc.get("chat_template") if doc is not None else None
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
    notes: list[str] = field(default_factory=list)  # for the Modelfile: which template Ollama will use


# Since v0.30 (llama-server as its runner, server/images.go) Ollama renders a chat with the GGUF's own
# Jinja instead of the Modelfile TEMPLATE when the Jinja shows more capabilities (tools, thinking)
# than the TEMPLATE, unless the server runs with OLLAMA_GO_TEMPLATE set. It finds them by these words.
_JINJA_TOOLS = ("tools", "tool_call")
_JINJA_THINKING_SPLIT = ("content.split('</think>')", 'content.split("</think>")')


def ollama_prefers_gguf_template(chat_template: str) -> bool:
    """True when Ollama >= 0.30 would use the GGUF's chat template over a TEMPLATE with no tools or
    thinking (as every TEMPLATE posttrain writes): the Jinja mentions tools or thinking."""
    tools = any(w in chat_template for w in _JINJA_TOOLS)
    thinking = ("<think>" in chat_template and "</think>" in chat_template) or (
        any(w in chat_template for w in _JINJA_THINKING_SPLIT)
        and "reasoning_content" not in chat_template and "<SPECIAL_12>" not in chat_template)
    return tools or thinking


def _notes(chat_template: str, gguf_template: str | None, written: str) -> tuple[list[str], list[str]]:
    """Modelfile comments saying which template Ollama will use, and a warning when that is not ours."""
    if not gguf_template or not ollama_prefers_gguf_template(gguf_template):
        return [f"TEMPLATE: {written}. Ollama uses it for every chat."], []
    choose = "Start `ollama serve` with OLLAMA_GO_TEMPLATE=1 to use this TEMPLATE, =0 for the GGUF's."
    if gguf_template != chat_template:
        warning = ("Ollama 0.30 and later will render chats with the GGUF's own chat template, which is not the "
                   "one this TEMPLATE follows, unless `ollama serve` runs with OLLAMA_GO_TEMPLATE=1")
        return [f"TEMPLATE: {written}.", f"{warning}.", choose], [warning]
    return [f"TEMPLATE: {written}.",
            "Ollama 0.30 and later render chats with the GGUF's own chat template instead, because that "
            "template declares tools or thinking; for chats without tools both give the same prompt.", choose], []


_SYSTEM_NOTES = {
    "dropped": "the model's chat template ignores system messages, so a system prompt has no effect",
    "refused": "the model's chat template refuses system messages, so the TEMPLATE shows none",
}


def choose_template(chat_template: str | None, tokens: Tokens, gguf_template: str | None = None) -> TemplateChoice:
    """The TEMPLATE for a model: derived from its Jinja, else a known family's, each written only when
    it renders the fixed conversations exactly as the Jinja does (`_render_check`). `gguf_template` is
    the GGUF's own `tokenizer.chat_template`, which newer Ollama may use instead (see `_notes`)."""
    if not chat_template:
        return TemplateChoice(None, None, warnings=["template not set: the model has no chat template, "
                                                    "Ollama will guess from the GGUF"],
                              notes=["No TEMPLATE: the model has no chat template."])
    derived = derive_template(chat_template, tokens)
    if derived.template is not None:
        warnings = [_SYSTEM_NOTES[derived.system_placement]] if derived.system_placement in _SYSTEM_NOTES else []
        notes, also = _notes(chat_template, gguf_template, "derived from the model's chat template and checked "
                                                           "to render the same prompts")
        if derived.date_note:  # Llama 3.2, Granite 3.x: the one place where the prompt cannot be the model's
            notes.insert(1, derived.date_note)
        return TemplateChoice(derived.template, "derived", derived.stop, derived.system, warnings + also, notes)
    family = detect_family(chat_template) if derived.kind != "refused" else None
    if family is not None and all(c.equal for c in check_template(family.template, chat_template, tokens, None)):
        notes, also = _notes(chat_template, gguf_template, f"posttrain's {family.name} template, checked to "
                                                           "render the same prompts as the model's chat template")
        return TemplateChoice(family.template, family.name, family.stop, warnings=also, notes=notes)
    return TemplateChoice(None, None, warnings=[f"template not set: {derived.reason}"],
                          notes=[f"No TEMPLATE: {derived.reason}.",
                                 "Ollama 0.30 and later then use the GGUF's own chat template; older versions "
                                 "guess one from it."])
