"""Ollama TEMPLATEs derived from real chat templates render exactly what the model's own Jinja renders.

The corpus is `tests/data/chat_templates/` (published models' templates, sources in SOURCES.md). The
Jinja side is transformers' own renderer; the TEMPLATE side is posttrain's Python executor of Go's
text/template, which is checked here against Go's real text/template on every template and
conversation (needs the Go toolchain; the rest runs without it).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from posttrain.serve._chat_templates import FAMILIES, choose_template
from posttrain.serve._gotemplate import execute
from posttrain.serve._render_check import (
    CHECK_TIME,
    CONVERSATIONS,
    Tokens,
    ollama_values,
    render_jinja,
    render_jinja_dated,
    render_ollama,
)
from posttrain.serve._template_derive import derive_template

CORPUS = Path(__file__).parent / "data" / "chat_templates"
# Most of the corpus is templates without their tokenizers: these stand in for BOS and EOS there.
SPECIAL = Tokens(bos="<s>", eos="</s>")
# Read from the GGUF the template came from (tokenizer.ggml.*): SmolLM2 adds no BOS, and its BOS is <|im_start|>.
KNOWN_TOKENS = {"HuggingFaceTB-SmolLM2-135M-Instruct": Tokens("<|im_start|>", "<|im_end|>", "<|endoftext|>", False)}


def _corpus() -> dict[str, tuple[str, Tokens]]:
    """name -> (Jinja, tokens): the template files, then the cases of llama.cpp's own template test."""
    corpus = {p.stem: (p.read_text(encoding="utf-8"), KNOWN_TOKENS.get(p.stem, SPECIAL))
              for p in sorted(CORPUS.glob("*.jinja"))}
    cases = json.loads((CORPUS / "llamacpp-test-chat-template.json").read_text(encoding="utf-8"))
    for name, case in cases.items():
        corpus[f"llama.cpp test: {name}"] = (case["template"], Tokens(case["bos_token"], case["eos_token"]))
    for entry in json.loads((CORPUS / "hf-ollama-utils-automap.json").read_text(encoding="utf-8")):
        name = f"ollama library: {entry['models'][0]}"
        while name in corpus:  # one model name, several published templates (qwq:32b has three)
            name += "'"
        corpus[name] = (entry["template"], SPECIAL)
    return corpus


CORPUS_TEMPLATES = _corpus()


@pytest.fixture(scope="module")
def derived():
    return {name: derive_template(text, tokens) for name, (text, tokens) in CORPUS_TEMPLATES.items()}


@pytest.fixture(scope="module")
def go_exec(tmp_path_factory):
    if shutil.which("go") is None:
        pytest.skip("needs the Go toolchain (text/template)")
    out = tmp_path_factory.mktemp("goexec") / "exec"
    subprocess.run(["go", "build", "-o", str(out), str(Path(__file__).parent / "go_template_exec.go")],
                   check=True, capture_output=True, timeout=300,
                   env={**os.environ, "GO111MODULE": "off", "GOCACHE": str(out.parent / "gocache")})

    def run(cases: list[dict]) -> list[dict]:
        done = subprocess.run([str(out)], input=json.dumps(cases), capture_output=True, text=True,
                              check=True, timeout=60)
        return json.loads(done.stdout)

    return run


def _case(template: str, values: dict, now: datetime.datetime = CHECK_TIME) -> dict:
    """One case for Go's text/template, its clock (currentDate) pinned to `now`."""
    messages = [{k: m[k] for k in ("Role", "Content", "Thinking", "ToolName")} for m in values["Messages"]]
    return {"Template": template, "System": values["System"], "Messages": messages,
            "Now": now.strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_corpus_counts_exact_refused_and_not_covered(derived):
    kinds = Counter(r.kind for r in derived.values())
    print(f"\ncorpus of {len(derived)}: {dict(kinds)}")
    for name, r in sorted(derived.items()):
        if r.kind != "exact":
            print(f"  {r.kind}: {name}: {r.reason}")
    assert len(derived) >= 199
    assert kinds["exact"] >= 189
    assert kinds["different"] == 0  # a derived TEMPLATE that renders differently is never written
    for r in derived.values():
        assert (r.template is None) == (r.kind != "exact")


def test_every_written_template_renders_both_conversations_exactly_as_the_jinja(derived):
    for name, r in derived.items():
        if r.template is None:
            continue
        text, tokens = CORPUS_TEMPLATES[name]
        for conversation in ("system+user+assistant+user", "user+assistant+user"):
            messages = CONVERSATIONS[conversation]
            if r.system_placement == "refused" and messages[0]["role"] == "system":
                continue  # Gemma 2 raises on a system message: nothing to match
            if r.dated:  # on one pinned day, each date the Jinja prints in Ollama's format
                expected = render_jinja_dated(text, messages, tokens)
                assert render_ollama(r.template, messages, r.system, today=CHECK_TIME.date()) == expected, name
                continue
            assert render_ollama(r.template, messages, r.system) == render_jinja(text, messages, tokens), \
                (name, conversation)


# Contents a user may send that a template must pass through untouched: Go's executor is the judge.
ODD = [{"role": "system", "content": "  spaced \n\n"}, {"role": "user", "content": '{{ .System }} "quoted" \\ é 中文'},
       {"role": "user", "content": "a second user turn"}, {"role": "assistant", "content": ""},
       {"role": "user", "content": "<|im_end|>\t{{- end }}"}]


def test_the_python_executor_renders_what_go_renders_on_the_whole_corpus(derived, go_exec):
    cases, expected = [], []
    templates = [r.template for r in derived.values() if r.template] + [f.template for f in FAMILIES]
    defaults = [r.system for r in derived.values() if r.template] + [None] * len(FAMILIES)
    for template, default in zip(templates, defaults, strict=True):
        for messages in [*CONVERSATIONS.values(), ODD]:
            values = ollama_values(messages, default)
            cases.append(_case(template, values))
            expected.append(execute(template, values, today=CHECK_TIME.date()))
    got = go_exec(cases)
    for case, want, result in zip(cases, expected, got, strict=True):
        assert result["err"] == "", (result["err"], case["Template"])
        assert result["out"] == want, case["Template"]


GO_FEATURES = [
    '{{- range $i, $m := .Messages }}{{ $i }}:{{ if eq $m.Role "user" "system" }}U{{ else if eq .Role "assistant" }}A'
    '{{ else }}?{{ end }}{{ end }}',
    '{{ with .System }}[{{ . }}]{{ else }}none{{ end }} {{ len .Messages }} {{ (index .Messages 0).Role }}',
    '{{ range .Messages }}{{ if eq .Role "assistant" }}{{ break }}{{ end }}{{ .Content | printf "%q" }}{{ end }}',
    '{{ $x := "a" }}{{ if true }}{{ $x = "b" }}{{ $y := "c" }}{{ end }}{{ $x }}{{ .Missing }} {{ and .System "yes" }}'
    ' {{ or .Tools "no tools" }} {{ not .Think }} {{ slice .System 0 3 }} {{ print 1 2 "x" 3 }}',
    '  {{- /* a comment */ -}}  \n{{- range .Messages }}{{ if ne .Role "user" }}{{ continue }}{{ end }}'
    '{{ json .Content }}{{ end }} {{- "x" -}} \n y {{ lt 1 2 }} {{ .Messages | len | eq 2 }}',
]


@pytest.mark.parametrize("template", GO_FEATURES, ids=range(len(GO_FEATURES)))
def test_the_python_executor_follows_go_on_the_constructs_templates_use(template, go_exec):
    values = ollama_values(CONVERSATIONS["system+user+assistant+user"], None)
    (result,) = go_exec([_case(template, values)])
    assert result["err"] == ""
    assert execute(template, values) == result["out"]


def test_thinking_prompt_default_system_and_system_placement_follow_the_model(derived):
    qwq = derived["Qwen-QwQ-32B"]
    # QwQ opens the assistant turn with <think> (this copy of its template closes it at once, too)
    assert "<|im_start|>assistant\n<think>\n" in render_ollama(qwq.template, CONVERSATIONS["user"], qwq.system)
    qwen = derived["Qwen-Qwen2.5-7B-Instruct"]
    assert qwen.system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    smol = derived["HuggingFaceTB-SmolLM2-135M-Instruct"]  # its default system prompt becomes the Modelfile SYSTEM
    assert smol.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert render_ollama(smol.template, CONVERSATIONS["user"], smol.system).startswith("<|im_start|>system\nYou are")
    assert smol.stop == ("<|im_end|>", "<|endoftext|>")
    assert derived["mistralai-Mistral-Nemo-Instruct-2407"].system_placement == "last-user"
    assert derived["llama.cpp test: Phi-3-mini"].system_placement == "dropped"
    assert ".System" not in derived["llama.cpp test: Phi-3-mini"].template
    assert derived["google-gemma-2-2b-it"].system_placement == "refused"
    assert ".System" not in derived["google-gemma-2-2b-it"].template
    llama31 = derived["meta-llama-Llama-3.1-8B-Instruct"]
    assert "Today Date: 26 Jul 2024" in render_ollama(llama31.template, CONVERSATIONS["user"], llama31.system)
    assert derived["meta-llama-Llama-3.1-8B-Instruct"].stop[0] == "<|eot_id|>"
    assert derived["deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"].stop[0] == "<｜end▁of▁sentence｜>"


# The families a survey of published templates found without a TEMPLATE or with a wrong one.
ISSUE_FAMILIES = [
    "command-r:35b", "command-r7b:7b", "deepseek-v2.5:236b", "deepseek-v3:671b", "deepseek-r1:8b", "granite4:latest",
    "exaone3.5:7.8b", "glm4:9b", "olmo2:7b", "tulu3:70b", "tinyllama:1.1b", "llama2:7b", "llama4:latest",
    "falcon2:11b", "openchat:7b", "nemotron-mini:4b", "mistral-large:123b", "mistral-small:24b", "mixtral:8x7b",
    "phi4:14b", "phi4-mini:3.8b", "llama3.1:8b", "qwq:32b", "qwen3:0.6b", "smollm2:135m",
]


@pytest.mark.parametrize("model", ISSUE_FAMILIES)
def test_every_family_of_the_survey_gets_an_exact_template(derived, model):
    r = derived[f"ollama library: library/{model}"]
    assert r.kind == "exact" and r.template is not None, r.reason
    assert r.stop, "a stop token from the template's turn end or the tokenizer"


# The templates that print today's date. Ollama's currentDate writes only 2031-11-27, so where the
# Jinja's format is another the TEMPLATE is the model's prompt but for the date's spelling.
DATED = {
    "meta-llama-Llama-3.2-3B-Instruct": "27 Nov 2031", "ollama library: library/llama3.2:3b": "27 Nov 2031",
    "ollama library: library/llama3.2-vision:latest": "27 Nov 2031",
    "ollama library: library/llama3.2-vision:90b": "27 Nov 2031",
    "ibm-granite-granite-3.3-2B-Instruct": "November 27, 2031",
    "ollama library: library/granite3.1-moe:1b": "November 27, 2031",
    "ollama library: library/granite3.2:8b": "November 27, 2031",
    "ollama library: library/granite3.3:2b": "November 27, 2031",
    "ollama library: library/devstral:latest": "2031-11-27", "Mistral-Small-3.2-24B-Instruct-2506": "2031-11-27",
    "openai-gpt-oss-120b": "2031-11-27", "Apertus-8B-Instruct": "2031-11-27",
    "upstage-Solar-Open-100B": "2031-11-27", "muse-glimmer": "2031-11-27",
}


def test_templates_that_print_todays_date_get_currentDate_and_match_the_jinja_in_every_other_character(
        derived, go_exec):
    cases, expected = [], []
    for name, jinja_date in DATED.items():
        r = derived[name]
        assert r.kind == "exact" and "{{ currentDate }}" in r.template, (name, r.reason)
        text, tokens = CORPUS_TEMPLATES[name]
        for conversation, messages in CONVERSATIONS.items():
            jinja = render_jinja(text, messages, tokens, strftime_now=CHECK_TIME.strftime)
            if messages[0]["role"] != "system":  # Granite's and Devstral's date is in their default system prompt
                assert jinja_date in jinja, (name, conversation)
            cases.append(_case(r.template, ollama_values(messages, r.system)))
            expected.append(jinja.replace(jinja_date, "2031-11-27"))
    for case, want, result in zip(cases, expected, go_exec(cases), strict=True):
        assert result["err"] == "" and result["out"] == want, case["Template"]


def test_the_date_in_a_template_is_the_day_of_the_chat_not_of_the_registration(derived, go_exec):
    r = derived["ollama library: library/llama3.2:3b"]
    values = ollama_values(CONVERSATIONS["user"], r.system)
    later = [_case(r.template, values, now=datetime.datetime(2032, 2, 3, 8, 0))]
    assert "Today Date: 2032-02-03\n" in go_exec(later)[0]["out"]


def test_the_modelfile_says_where_the_dates_format_differs_from_the_models():
    llama32, tokens = CORPUS_TEMPLATES["meta-llama-Llama-3.2-3B-Instruct"]
    choice = choose_template(llama32, tokens)
    assert choice.source == "derived" and choice.warnings == []
    (note,) = [n for n in choice.notes if "date" in n]
    assert "'27 Nov 2031' (%d %b %Y)" in note and "'2031-11-27'" in note
    devstral, tokens = CORPUS_TEMPLATES["ollama library: library/devstral:latest"]  # the same format as Ollama's
    assert not any("date" in n for n in choose_template(devstral, tokens).notes)


def test_a_default_system_prompt_naming_the_date_stays_in_the_template(derived):
    # Granite's default system prompt holds today's date: a fixed SYSTEM would be stale tomorrow.
    r = derived["ollama library: library/granite3.3:2b"]
    assert r.system is None
    no_system = render_ollama(r.template, CONVERSATIONS["user"], r.system, today=CHECK_TIME.date())
    assert "Today's Date: 2031-11-27. You are Granite" in no_system
    with_system = render_ollama(r.template, CONVERSATIONS["system+user"], r.system, today=CHECK_TIME.date())
    assert with_system.startswith("<|start_of_role|>system<|end_of_role|>You are a concise assistant.<|end_of_text|>")


def test_gemma_3_reading_the_system_message_as_typed_parts_keeps_the_system_prompt(derived, go_exec):
    text, tokens = CORPUS_TEMPLATES["ollama library: library/gemma3:1b"]
    assert "messages[0]['content'][0]['text']" in text
    r = derived["ollama library: library/gemma3:1b"]
    assert r.kind == "exact" and r.system_placement == "head" and ".System" in r.template
    messages = CONVERSATIONS["system+user+assistant+user"]
    typed = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    (result,) = go_exec([_case(r.template, ollama_values(messages, r.system))])
    assert result["out"] == render_jinja(text, typed, tokens)
    assert result["out"].startswith("<start_of_turn>user\nYou are a concise assistant.\n\nWhat is the capital")
    assert choose_template(text, tokens).warnings == []  # no "ignores system messages" any more


def test_safety_classifier_templates_get_no_chat_template(derived):
    for model in ("granite3-guardian:2b", "llama-guard3:8b", "shieldgemma:27b"):
        r = derived[f"ollama library: library/{model}"]
        assert r.template is None and r.kind == "refused" and "classifier" in r.reason


def test_a_template_that_renders_differently_is_refused_naming_the_first_difference():
    # The question mark in the real conversation changes this template's output; the marker words had none.
    odd = ("{% for m in messages %}<|{{ m.role }}|>{% if '?' in m.content %}Q: {% endif %}{{ m.content }}<|end|>"
           "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    r = derive_template(odd, SPECIAL)
    assert r.template is None and r.kind == "different"
    assert "character" in r.reason and "Q: " in r.reason


def test_typed_parts_are_taken_only_where_the_template_reads_their_text():
    # Fails on plain text, and given parts prints their Python repr: that is no prompt to copy.
    odd = "{% for m in messages %}{{ (m.content[0]['text'] + '|') ~ m.content }}{% endfor %}"
    r = derive_template(odd, SPECIAL)
    assert r.template is None and r.kind == "refused"
