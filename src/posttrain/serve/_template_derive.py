"""An Ollama TEMPLATE derived from the model's own Jinja chat template by rendering it.

Hand-written family templates drift from the real ones (a dropped date header, a missing `<think>`,
a default system prompt never emitted). Instead the Jinja is rendered on conversations whose
contents are unique marker words; the text around the markers is exactly what the template puts
between turns, and the TEMPLATE is assembled from those pieces:

- the head before the first user message, with a system prompt and without one (when the two differ
  only by the system text, the text the Jinja shows without one is its default system prompt,
  written as the Modelfile SYSTEM);
- what goes between a user message and the next assistant message, and back;
- what ends the prompt after the last user message (the generation prompt, a `<think>` included).

A system prompt may sit in the head (ChatML, Llama 3, Gemma's first user turn), in front of the last
user message (Mistral v1-v3), or nowhere (templates that drop it). A template that prints today's
date (Llama 3.2, Granite 3.x, Devstral) is rendered with a marker word for the date, which becomes
Ollama's `{{ currentDate }}`; Ollama prints that only as year-month-day, so where the Jinja writes
another format ("27 Nov 2031") the result says which. Templates whose turns are not regular, or that classify
conversations instead of chatting, get no TEMPLATE. Whatever is derived is then checked by
`_render_check` on real conversations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from posttrain.serve._gotemplate import OLLAMA_DATE_FORMAT
from posttrain.serve._render_check import CHECK_TIME, Check, JinjaRefused, Tokens, check_template, render_jinja

# Marker contents: plain words that no template trims, escapes or changes, and no template contains.
_SYS, _U1, _A1, _U2, _A2, _U3 = "Qsysxz", "Quoneaxz", "Qaoneaxz", "Qutwoxz", "Qatwoxz", "Quthreexz"
_DATE = "Qdatexz"  # what a dated template's strftime_now returns while it is derived: {{ currentDate }}

_CLASSIFIER = re.compile(r"guardian_config|You are a safety agent|policy expert trying to help|"
                         r"Check if there is unsafe content|UNSAFE CONTENT CATEGORIES", re.IGNORECASE)
# The first special token after an assistant's text is where its turn ends: the model's stop.
_TURN_END = re.compile(r"^\s*(<[^<>\s]{1,64}>|\[/?[A-Z_]{2,32}\])")


@dataclass
class TemplateResult:
    """The TEMPLATE to write (None when refused), and what was found out on the way."""

    template: str | None
    reason: str | None = None  # why no TEMPLATE: refused, not covered, or a rendering differs
    system: str | None = None  # the Jinja's default system prompt, for the Modelfile SYSTEM
    stop: tuple[str, ...] = ()
    system_placement: str = ""  # head, last-user, dropped, refused
    checks: list[Check] = field(default_factory=list)
    kind: str = "exact"  # exact, refused (classifier, template errors), not-covered, different
    dated: bool = False  # the template prints today's date: the TEMPLATE has {{ currentDate }}
    date_formats: tuple[str, ...] = ()  # the Jinja's date formats where they are not Ollama's 2031-11-27

    @property
    def date_note(self) -> str | None:
        """For the Modelfile: how the date differs from the model's own, where it does."""
        if not self.date_formats:
            return None
        theirs = " or ".join(f"'{CHECK_TIME.strftime(f)}' ({f})" for f in self.date_formats)
        return (f"The model's chat template writes today's date like {theirs}; Ollama's currentDate writes "
                f"that day '{CHECK_TIME.strftime(OLLAMA_DATE_FORMAT)}' and takes no format: the TEMPLATE's "
                "prompt differs from the model's there and nowhere else.")


def _go(text: str, trim: bool = False) -> str:
    """`text` as Go string literals in actions, so that trimming and `{{` in it cannot matter, with
    `{{ currentDate }}` where the date marker is; `trim`: the first action trims the newline before it."""
    actions = []
    for n, piece in enumerate(text.split(_DATE)):
        if n:
            actions.append("currentDate")
        if piece:
            actions.append(json.dumps(piece, ensure_ascii=False))
    return "".join(("{{- " if trim and not i else "{{ ") + a + " }}" for i, a in enumerate(actions))


def _split(rendered: str, markers: list[str]) -> list[str] | None:
    """The text before, between and after `markers`, which must appear once each and in order."""
    pieces, pos = [], 0
    for m in markers:
        at = rendered.find(m, pos)
        if at < 0 or rendered.count(m) != 1:
            return None
        pieces.append(rendered[pos:at])
        pos = at + len(m)
    pieces.append(rendered[pos:])
    return pieces


def _messages(*contents: str) -> list[dict[str, str]]:
    roles = {_SYS: "system", _U1: "user", _U2: "user", _U3: "user", _A1: "assistant", _A2: "assistant"}
    return [{"role": roles[c], "content": c} for c in contents]


def _dated(chat_template: str, tokens: Tokens) -> bool:
    """True when the rendering changes with today's date (Llama 3.2's "Today Date: 26 Nov 2026")."""
    for msgs in (_messages(_U1), _messages(_SYS, _U1)):
        try:
            if (render_jinja(chat_template, msgs, tokens, strftime_now=lambda f: "01 Jan 2001")
                    != render_jinja(chat_template, msgs, tokens, strftime_now=lambda f: "02 Feb 2002")):
                return True
        except JinjaRefused:
            continue
    return False


def _stops(between_turns: str, tokens: Tokens) -> tuple[str, ...]:
    stops = []
    m = _TURN_END.match(between_turns)
    if m:
        stops.append(m.group(1))
    for token in (tokens.eot, tokens.eos):
        if token and token not in stops:
            stops.append(token)
    return tuple(stops)


def _assemble(head_system: tuple[str, str] | None, head_plain: str, last_user: tuple[str, str] | None,
              user_to_assistant: str, assistant_to_user: str, tail: str) -> str:
    """The Go TEMPLATE: a head, then each message with the text the Jinja puts before it, then the tail."""
    lines = []
    if head_system is not None:
        lines.append("{{- if .System }}" + _go(head_system[0]) + "{{ .System }}" + _go(head_system[1])
                     + "{{ else }}" + _go(head_plain) + "{{ end }}")
    else:
        lines.append(_go(head_plain, trim=True))
    lines.append("{{- $first := true }}")
    lines.append("{{- range $i, $m := .Messages }}")
    lines.append("{{- if eq .Role \"user\" }}"
                 "{{ if $first }}{{ $first = false }}{{ else }}" + _go(assistant_to_user) + "{{ end }}")
    if last_user is not None:
        lines.append("{{- if and $.System (eq (len (slice $.Messages $i)) 1) }}" + _go(last_user[0])
                     + "{{ $.System }}" + _go(last_user[1]) + "{{ end }}")
    lines.append("{{- .Content }}")
    lines.append("{{- else if eq .Role \"assistant\" }}" + _go(user_to_assistant) + "{{ .Content }}")
    lines.append("{{- end }}")
    lines.append("{{- end }}")
    lines.append(_go(tail, trim=True))
    return "\n".join(line for line in lines if line)


@dataclass
class _Placement:
    """Where the Jinja puts a system prompt, and the text around it there."""

    kind: str  # head, last-user, dropped, refused; "" when no TEMPLATE shape here fits
    head: tuple[str, str] | None = None  # before and after the system text, up to the first user message
    last_user: tuple[str, str] | None = None  # before and after it, in front of the last user message
    default: str | None = None  # the system text the Jinja shows when it is given none


def _place_system(render: Callable[[list[dict[str, str]]], str], plain_text: str, plain: list[str]) -> _Placement:
    head, assistant_to_user, tail = plain[0], plain[2], plain[5]
    try:
        with_system = render(_messages(_SYS, _U1, _A1, _U2, _A2, _U3))
    except JinjaRefused:
        return _Placement("refused")
    if _SYS not in with_system:
        return _Placement("dropped" if with_system == plain_text else "")
    in_head = _split(with_system, [_SYS, _U1, _A1, _U2, _A2, _U3])
    if in_head and in_head[2:] == plain[1:]:
        before, after = in_head[0], in_head[1]
        default = None
        if head.startswith(before) and head.endswith(after) and len(head) > len(before) + len(after):
            default = head[len(before):len(head) - len(after)]
        if default is not None and _DATE in default:
            # A default naming today's date (Granite 3.x, Devstral) cannot be a fixed SYSTEM: it stays in
            # the TEMPLATE's head, which prints it with {{ currentDate }} when the chat has no system.
            default = None
        return _Placement("head", head=(before, after), default=default)
    at_last = _split(with_system, [_U1, _A1, _U2, _A2, _SYS, _U3])
    if at_last and at_last[:4] == plain[:4] and at_last[4].startswith(assistant_to_user) and at_last[6] == tail:
        return _Placement("last-user", last_user=(at_last[4][len(assistant_to_user):], at_last[5]))
    return _Placement("")


def derive_template(chat_template: str, tokens: Tokens) -> TemplateResult:
    """The TEMPLATE for `chat_template`, checked on every conversation of `_render_check.CONVERSATIONS`.

    `tokens` are the tokenizer's special tokens: BOS and EOS go to the template as transformers
    passes them, EOT and EOS become stop tokens beside the template's own turn end.
    """
    if _CLASSIFIER.search(chat_template):
        return TemplateResult(None, "a safety classifier's template: it wraps the conversation in a "
                              "classification prompt, so chat turns have no TEMPLATE", kind="refused")
    dated = _dated(chat_template, tokens)
    formats: set[str] = set()

    def clock(fmt: str) -> str:
        formats.add(fmt)
        return _DATE

    def render(messages: list[dict[str, str]]) -> str:
        return render_jinja(chat_template, messages, tokens, strftime_now=clock if dated else None)

    try:
        plain_text = render(_messages(_U1, _A1, _U2, _A2, _U3))
    except JinjaRefused as e:
        return TemplateResult(None, f"the model's template fails on a plain chat: {e}", kind="refused")
    plain = _split(plain_text, [_U1, _A1, _U2, _A2, _U3])
    if plain is None or plain[3] != plain[1] or plain[4] != plain[2]:
        return TemplateResult(None, "the template does not render every turn the same way", kind="not-covered")
    placement = _place_system(render, plain_text, plain)
    if not placement.kind:
        return TemplateResult(None, "the template places or changes the system prompt in a way no TEMPLATE "
                              "shape here follows", kind="not-covered")
    head, user_to_assistant, assistant_to_user, tail = plain[0], plain[1], plain[2], plain[5]
    template = _assemble(placement.head, head, placement.last_user, user_to_assistant, assistant_to_user, tail)
    result = TemplateResult(template, system=placement.default, stop=_stops(assistant_to_user, tokens),
                            system_placement=placement.kind, dated=dated,
                            date_formats=tuple(sorted(f for f in formats if f != OLLAMA_DATE_FORMAT)))
    result.checks = check_template(template, chat_template, tokens, placement.default, dated=dated)
    failed = next((c for c in result.checks if not c.equal), None)
    if failed is not None:
        result.template = None
        result.kind = "different"
        result.reason = f"the TEMPLATE would render {failed.conversation} differently: {failed.detail}"
    return result
