"""The Go templates posttrain gives Ollama produce the same prompt as the checkpoint's Jinja template.

Each family's Go TEMPLATE is executed by Go's own text/template (the engine Ollama uses), with the
values Ollama passes (`.System` = the system messages joined, `.Messages` = all messages, or
`.Prompt` for /api/generate), and compared with jinja2's rendering of a Hugging Face-style chat
template of that family (BOS excluded: llama.cpp adds it from the GGUF). Needs a Go toolchain.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import jinja2
import pytest

from posttrain.serve._chat_templates import (
    CHATML,
    GEMMA,
    LLAMA3,
    MISTRAL,
    PHI3,
    ChatFamily,
    detect_family,
)

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain (text/template)")

HF_TEMPLATES = {
    "chatml": "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "llama3": "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
              " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
              "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    "gemma": "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\\n\\n' %}"
             "{% set loop_messages = messages[1:] %}{% else %}{% set prefix = '' %}{% set loop_messages = messages %}"
             "{% endif %}{% for m in loop_messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
             "{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') + m['content'] | trim + '<end_of_turn>\\n' }}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
    "mistral": "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
               "{% set loop_messages = messages[1:] %}{% else %}{% set system = '' %}{% set loop_messages = messages %}"
               "{% endif %}{% for m in loop_messages %}{% if m['role'] == 'user' %}{% if loop.last and system %}"
               "{{ '[INST] ' + system + '\\n\\n' + m['content'] + '[/INST]' }}{% else %}"
               "{{ '[INST] ' + m['content'] + '[/INST]' }}{% endif %}{% else %}{{ ' ' + m['content'] + eos_token }}"
               "{% endif %}{% endfor %}",
    "phi3": "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
}

GO_RENDER = """
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct{ Role, Content string }

type Case struct {
	Template string
	Messages []Message
	Prompt   string
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	var out []string
	for _, c := range cases {
		tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(c.Template))
		// What Ollama passes: system messages joined into .System, every message in .Messages.
		var system []string
		for _, m := range c.Messages {
			if m.Role == "system" {
				system = append(system, m.Content)
			}
		}
		values := map[string]any{"System": strings.Join(system, "\\n\\n"), "Response": ""}
		if c.Prompt != "" {
			values["Prompt"] = c.Prompt
		} else {
			values["Messages"] = c.Messages
		}
		var b strings.Builder
		if err := tmpl.Execute(&b, values); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello, how are you?"}],
    "user-assistant-user": [{"role": "user", "content": "Hello, how are you?"},
                            {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
                            {"role": "user", "content": "I'd like to show off how chat templating works!"}],
}
CONVERSATIONS["system-user"] = [SYSTEM, *CONVERSATIONS["user"]]
CONVERSATIONS["system-user-assistant-user"] = [SYSTEM, *CONVERSATIONS["user-assistant-user"]]


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    src = tmp_path_factory.mktemp("gorender") / "render.go"
    src.write_text(GO_RENDER)
    binary = src.with_suffix("")
    subprocess.run(["go", "build", "-o", str(binary), str(src)], check=True, capture_output=True,
                   env={**__import__("os").environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "off",
                        "GOCACHE": str(src.parent / "cache")})

    def render(cases: list[dict]) -> list[str]:
        done = subprocess.run([str(binary)], input=json.dumps(cases), capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    return render


def _jinja(name: str, messages: list[dict]) -> str:
    env = jinja2.Environment()
    return env.from_string(HF_TEMPLATES[name]).render(messages=messages, add_generation_prompt=True,
                                                      bos_token="", eos_token="</s>")


@pytest.mark.parametrize("family", [CHATML, LLAMA3, GEMMA, MISTRAL, PHI3], ids=lambda f: f.name)
def test_go_template_renders_what_the_jinja_template_renders(family: ChatFamily, go_render):
    assert detect_family(HF_TEMPLATES[family.name]) is family
    names = list(CONVERSATIONS)
    chat = go_render([{"Template": family.template, "Messages": CONVERSATIONS[n]} for n in names])
    for name, got in zip(names, chat, strict=True):
        assert got == _jinja(family.name, CONVERSATIONS[name]), name
    # /api/generate: .Prompt (and .System) instead of .Messages
    (generated,) = go_render([{"Template": family.template, "Messages": [SYSTEM], "Prompt": "Hello, how are you?"}])
    assert generated == _jinja(family.name, CONVERSATIONS["system-user"])
