"""Rendering a conversation both ways: the model's Jinja (transformers' renderer) and an Ollama TEMPLATE.

A TEMPLATE is only right if Ollama builds, from the same messages, the very prompt the model's own
chat template builds. So both are rendered on a fixed set of conversations and compared character
by character. The Ollama side follows what Ollama does before it executes a TEMPLATE (its
template.Execute on the `.Messages` path): a Modelfile SYSTEM is put in front as a system message
when the chat has none, consecutive messages of one role are joined with a blank line, `.System` is
the system messages joined, and no tools are passed.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass

from posttrain.serve._gotemplate import OLLAMA_DATE_FORMAT, GoStruct, GoTemplateError, execute

SYSTEM = {"role": "system", "content": "You are a concise assistant."}
USER_1 = {"role": "user", "content": "What is the capital of France?"}
ASSISTANT_1 = {"role": "assistant", "content": "The capital of France is Paris."}
USER_2 = {"role": "user", "content": "And of Italy?"}

# The conversations every TEMPLATE must render exactly as the model's Jinja does.
CONVERSATIONS: dict[str, list[dict[str, str]]] = {
    "system+user+assistant+user": [SYSTEM, USER_1, ASSISTANT_1, USER_2],
    "user+assistant+user": [USER_1, ASSISTANT_1, USER_2],
    "system+user": [SYSTEM, USER_1],
    "user": [USER_1],
}


# The moment both clocks are pinned to when a template prints today's date: the Jinja's strftime_now
# and the TEMPLATE's currentDate. Day, month and year differ in every digit, so no date format can
# read as another, and no template contains it otherwise.
CHECK_TIME = datetime.datetime(2031, 11, 27, 14, 5)


@dataclass(frozen=True)
class Tokens:
    """The tokenizer's special tokens as the chat template and llama.cpp see them."""

    bos: str = ""
    eos: str = ""
    eot: str = ""  # end of turn, where the tokenizer has one apart from EOS
    add_bos: bool = True  # llama.cpp puts BOS in front of the prompt itself (the GGUF's add_bos_token)

    def template_kwargs(self) -> dict[str, str]:
        return {"bos_token": self.bos, "eos_token": self.eos}


class JinjaRefused(Exception):
    """The model's own template raises for this conversation (e.g. "System role not supported")."""


def render_jinja(chat_template: str, messages: list[dict[str, str]], tokens: Tokens,
                 *, strftime_now: Callable[[str], str] | None = None) -> str:
    """The prompt transformers' own chat-template renderer builds, generation prompt included, without
    the leading BOS when llama.cpp adds one itself when tokenizing (in Ollama and posttrain's server)."""
    try:
        return _render_jinja(chat_template, messages, tokens, strftime_now)
    except JinjaRefused:
        # Some templates read a message only as typed parts, as a processor sends it (Gemma 3's
        # `messages[0]['content'][0]['text']`); Ollama hands over plain text, which is the same text.
        typed = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
        try:
            text = _render_jinja(chat_template, typed, tokens, strftime_now)
        except JinjaRefused:
            pass
        else:
            if "'type': 'text'" not in text:  # a template that printed the parts' repr does not take them
                return text
        raise


def _render_jinja(chat_template: str, messages: list[dict], tokens: Tokens,
                  strftime_now: Callable[[str], str] | None) -> str:
    from jinja2.exceptions import TemplateError
    from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

    special = tokens.template_kwargs()
    try:
        if strftime_now is None:
            rendered, _ = render_jinja_template([messages], chat_template=chat_template,
                                                add_generation_prompt=True, **special)
        else:  # transformers' own environment, its clock pinned (it turns callables passed in into text)
            compiled = _compile_jinja_template(chat_template)
            pinned = compiled.environment.from_string(chat_template, globals={"strftime_now": strftime_now})
            rendered = [pinned.render(messages=messages, tools=None, documents=None, add_generation_prompt=True,
                                      **special)]
    except TemplateError as e:
        raise JinjaRefused(str(e)) from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:  # a template's own bug
        raise JinjaRefused(f"{type(e).__name__}: {e}") from None
    text = rendered[0]
    return text[len(tokens.bos):] if tokens.add_bos and tokens.bos and text.startswith(tokens.bos) else text


def ollama_values(messages: list[dict[str, str]], default_system: str | None) -> dict[str, object]:
    """The data Ollama hands a `.Messages` TEMPLATE for this chat (tools absent, thinking not set)."""
    if default_system and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": default_system}, *messages]
    collated: list[GoStruct] = []
    for m in messages:
        if collated and collated[-1]["Role"] == m["role"]:
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append(GoStruct(Role=m["role"], Content=m["content"], Thinking="", Images=[],
                                     ToolCalls=[], ToolName=""))
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return {"System": system, "Messages": collated, "Tools": [], "Response": "", "Think": False,
            "ThinkLevel": "", "IsThinkSet": False}


def render_ollama(template: str, messages: list[dict[str, str]], default_system: str | None,
                  *, today: datetime.date | None = None) -> str:
    return execute(template, ollama_values(messages, default_system), today=today)


def render_jinja_dated(chat_template: str, messages: list[dict[str, str]], tokens: Tokens,
                       when: datetime.datetime = CHECK_TIME) -> str:
    """The Jinja's prompt on the day `when`, each date it prints written as Ollama's currentDate writes
    it: every other character is the Jinja's own, to be matched exactly."""
    printed: set[str] = set()

    def clock(fmt: str) -> str:
        printed.add(when.strftime(fmt))
        return when.strftime(fmt)

    text = render_jinja(chat_template, messages, tokens, strftime_now=clock)
    dates = [d for d in sorted(printed, key=len, reverse=True) if d]
    # One pass, longest first: "2031-11-27" must not have its "2031" replaced again.
    return re.sub("|".join(map(re.escape, dates)), when.strftime(OLLAMA_DATE_FORMAT), text) if dates else text


def first_difference(expected: str, got: str) -> str:
    """Where two renderings part, in words: the offset and a few characters of each side."""
    n = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
    return (f"at character {n}: the model's template has {expected[n:n + 24]!r}, "
            f"the TEMPLATE gives {got[n:n + 24]!r}")


@dataclass
class Check:
    """One conversation rendered both ways."""

    conversation: str
    equal: bool
    detail: str = ""  # the first difference, or why a side could not render


def check_template(template: str, chat_template: str, tokens: Tokens,
                   default_system: str | None, *, dated: bool = False) -> list[Check]:
    """Every conversation of CONVERSATIONS rendered by the Jinja and by the TEMPLATE, compared.

    A conversation the Jinja itself refuses (a system message where the model has no system role) is
    not held against the TEMPLATE: Ollama then cannot match it, and the caller says so. `dated`: the
    Jinja prints today's date; both sides then render on CHECK_TIME, and the dates the Jinja prints
    are compared in Ollama's format (`render_jinja_dated`), the one thing a TEMPLATE cannot choose.
    """
    checks = []
    for name, messages in CONVERSATIONS.items():
        try:
            expected = (render_jinja_dated(chat_template, messages, tokens) if dated
                        else render_jinja(chat_template, messages, tokens))
        except JinjaRefused as e:
            checks.append(Check(name, True, f"the model's template refuses it: {e}"))
            continue
        try:
            got = render_ollama(template, messages, default_system, today=CHECK_TIME.date() if dated else None)
        except GoTemplateError as e:
            checks.append(Check(name, False, f"the TEMPLATE fails: {e}"))
            continue
        checks.append(Check(name, expected == got, "" if expected == got else first_difference(expected, got)))
    return checks
