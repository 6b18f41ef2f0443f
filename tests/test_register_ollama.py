"""Ollama import against the stand-in server (tests/ollama_standin.py): Ollama cannot be installed here.

posttrain's code path is the production one: the official `ollama` client and plain HTTP to the
documented endpoints. The stand-in verifies blob bytes against their digest and Ollama's name rules.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import ollama
import pytest
from ollama_standin import CANNED_REPLY, OllamaStandin
from typer.testing import CliRunner

import posttrain.serve._ollama as ollama_mod
from posttrain.errors import PosttrainError, TransientError
from posttrain.serve import (
    DEFAULT_PARAMETERS,
    FAMILIES,
    register_variants,
    resolve_ollama_gguf,
    unregister,
)
from posttrain.serve._render_check import CONVERSATIONS, Tokens, render_jinja, render_ollama
from posttrain.store import Store

CORPUS = Path(__file__).parent / "data" / "chat_templates"

CHATML_JINJA = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
                " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    from tenacity import wait_none

    monkeypatch.setattr(ollama_mod, "RETRY_WAIT", wait_none())


@pytest.fixture
def gguf_dir(tiny_gguf, tmp_path) -> Path:
    """A private copy of the convert output (GGUFs + manifest.json): register writes Modelfiles beside them."""
    src = next(iter(tiny_gguf.values())).parent
    out = tmp_path / "gguf"
    out.mkdir()
    for f in [*src.glob("*.gguf"), src / "manifest.json"]:
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture
def standin(tmp_path):
    with OllamaStandin(tmp_path / "ollama") as s:
        yield s


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "posttrain.db")


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_variant_is_imported_with_its_blob_parameters_and_modelfile(gguf_dir, standin, store):
    regs = register_variants(gguf_dir, url=standin.url, store=store)
    model = json.loads((gguf_dir / "manifest.json").read_text())["model_name"]
    ggufs = sorted(gguf_dir.glob("*.gguf"))
    assert len(regs) == len(ggufs) == 3
    assert {r.name for r in regs} == {f"{model}_{q}:latest" for q in ("f16", "q8_0", "q4_k_m")}

    uploads = standin.requests_to("POST", "/api/blobs/")
    assert sorted(u.path.removeprefix("/api/blobs/") for u in uploads) == sorted(_sha(g) for g in ggufs)
    creates = [r.body for r in standin.requests_to("POST", "/api/create")]
    for reg in regs:
        assert reg.status == "created" and reg.uploaded
        assert reg.digest == _sha(reg.variant)
        body = next(c for c in creates if c["model"] == reg.name)
        assert body["files"] == {reg.variant.name: reg.digest}
        assert body["parameters"] == DEFAULT_PARAMETERS  # tiny model: no chat template, so no stop tokens
        assert "template" not in body  # unknown family: Ollama's own detection, and a warning says so
        assert any("template not set" in w for w in reg.warnings)
        # the smoke chat went through Ollama and was timed
        assert reg.smoke_text == CANNED_REPLY and reg.smoke_latency_s > 0
        modelfile = (gguf_dir / f"{reg.variant.name}.Modelfile").read_text()
        assert f"FROM ./{reg.variant.name}\n" in modelfile
        assert "PARAMETER temperature 0.7" in modelfile and "PARAMETER num_ctx 4096" in modelfile
        assert "\nTEMPLATE" not in modelfile and "# No TEMPLATE: the model has no chat template." in modelfile
    rows = store.query("SELECT name, blob_digest, smoke_text FROM registrations WHERE ollama_url=?", (standin.url,))
    assert {(r["name"], r["blob_digest"]) for r in rows} == {(r.name, r.digest) for r in regs}
    assert all(r["smoke_text"] == CANNED_REPLY for r in rows)


def test_registering_again_uploads_nothing_and_creates_nothing(gguf_dir, standin, store):
    register_variants(gguf_dir, url=standin.url, store=store)
    standin.requests.clear()
    again = register_variants(gguf_dir, url=standin.url, store=store)
    assert [r.status for r in again] == ["unchanged"] * 3
    assert not any(r.uploaded for r in again)
    assert standin.requests_to("POST", "/api/blobs/") == []
    assert standin.requests_to("POST", "/api/create") == []


def test_a_changed_parameter_replaces_the_model_and_reuses_the_blob(gguf_dir, standin, store):
    register_variants(gguf_dir, url=standin.url, store=store)
    standin.requests.clear()
    regs = register_variants(gguf_dir, url=standin.url, store=store, params={"temperature": "0.2", "stop": ["END"]})
    assert [r.status for r in regs] == ["replaced"] * 3
    assert not any(r.uploaded for r in regs)
    assert len(standin.requests_to("HEAD", "/api/blobs/")) == 3  # asked, found, not uploaded
    assert standin.requests_to("POST", "/api/blobs/") == []
    for reg in regs:
        stored = standin.models[reg.name]
        assert stored.parameters == {"temperature": 0.2, "top_p": 0.9, "num_ctx": 4096, "stop": ["END"]}
        assert 'PARAMETER stop "END"' in reg.modelfile.read_text()


def test_the_chat_template_becomes_an_ollama_template_that_renders_the_same_prompt(gguf_dir, standin, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML_JINJA}))
    regs = register_variants(sorted(gguf_dir.glob("*Q8_0.gguf")),
                             url=standin.url, checkpoint=ckpt, name="My Chat Model")
    (reg,) = regs
    assert reg.name == "my-chat-model_q8_0:latest"
    assert reg.template_family == "derived" and reg.warnings == []
    (create,) = [r.body for r in standin.requests_to("POST", "/api/create")]
    assert create["template"] == reg.template
    tokens = Tokens(bos="<s>", eos="</s>")  # the tiny model's SentencePiece specials
    for messages in CONVERSATIONS.values():
        assert render_ollama(reg.template, messages, None) == render_jinja(CHATML_JINJA, messages, tokens)
    # the turn end the template writes after an answer, then the tokenizer's EOS
    assert create["parameters"]["stop"] == ["<|im_end|>", "</s>"]
    assert standin.models[reg.name].template == reg.template
    assert f'TEMPLATE """{reg.template}"""' in reg.modelfile.read_text()
    # the Modelfile says which template is meant; this Jinja declares no tools, so Ollama keeps the TEMPLATE
    assert "# TEMPLATE: derived from the model's chat template" in reg.modelfile.read_text()
    assert "OLLAMA_GO_TEMPLATE" not in reg.modelfile.read_text()
    # same template again: unchanged; another model's template: replaced
    assert register_variants(sorted(gguf_dir.glob("*Q8_0.gguf")), url=standin.url, checkpoint=ckpt,
                             name="My Chat Model")[0].status == "unchanged"
    llama31 = (CORPUS / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
    again = register_variants(sorted(gguf_dir.glob("*Q8_0.gguf")), url=standin.url, name="My Chat Model",
                              chat_template=llama31)
    assert again[0].status == "replaced" and "Cutting Knowledge Date" in standin.models[reg.name].template
    # the tiny GGUF carries no chat template of its own: Ollama has nothing to prefer over the TEMPLATE
    assert "Ollama uses it for every chat" in again[0].modelfile.read_text()


def test_a_template_that_would_render_differently_is_not_written_and_the_difference_is_named(gguf_dir, standin):
    # A question mark changes this template's output: the TEMPLATE cannot follow it.
    odd = ("{% for m in messages %}<|{{ m.role }}|>{% if '?' in m.content %}Q: {% endif %}{{ m.content }}<|end|>"
           "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    (reg,) = register_variants(sorted(gguf_dir.glob("*Q8_0.gguf")), url=standin.url, chat_template=odd, smoke=False)
    assert reg.template is None and reg.template_family is None
    (warning,) = reg.warnings
    assert warning.startswith("template not set") and "at character" in warning and "Q: " in warning
    (create,) = [r.body for r in standin.requests_to("POST", "/api/create")]
    assert "template" not in create or create["template"] is None
    assert "\nTEMPLATE" not in reg.modelfile.read_text()
    assert "# No TEMPLATE: the TEMPLATE would render" in reg.modelfile.read_text()


def test_a_safety_classifier_gets_no_chat_template_and_says_why(gguf_dir, standin):
    guard = ("{% for m in messages %}Task: Check if there is unsafe content in '{{ m.role }}' messages.\n"
             "{{ m.content }}{% endfor %}")
    (reg,) = register_variants(sorted(gguf_dir.glob("*Q8_0.gguf")), url=standin.url, chat_template=guard, smoke=False)
    assert reg.template is None
    assert any("classifier" in w for w in reg.warnings)
    assert "\nTEMPLATE" not in reg.modelfile.read_text()


def test_a_default_system_prompt_of_the_template_is_written_as_system(gguf_dir, standin):
    smol = (CORPUS / "HuggingFaceTB-SmolLM2-135M-Instruct.jinja").read_text()
    (reg,) = register_variants(sorted(gguf_dir.glob("*Q8_0.gguf")), url=standin.url, chat_template=smol, smoke=False)
    assert reg.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert standin.models[reg.name].system == reg.system
    assert f'SYSTEM "{reg.system}"' in reg.modelfile.read_text()
    # --system wins over the template's default
    (mine,) = register_variants(sorted(gguf_dir.glob("*Q8_0.gguf")), url=standin.url, chat_template=smol,
                                system="Answer in French.", smoke=False)
    assert standin.models[mine.name].system == "Answer in French."


def test_llama_3_2_and_gemma_3_get_a_template_the_modelfile_saying_where_the_date_differs(gguf_dir, standin):
    llama32 = (CORPUS / "meta-llama-Llama-3.2-3B-Instruct.jinja").read_text()
    (reg,) = register_variants(sorted(gguf_dir.glob("*Q8_0.gguf")), url=standin.url, chat_template=llama32,
                               smoke=False)
    assert reg.template_family == "derived" and reg.warnings == []
    text = reg.modelfile.read_text()
    assert f'TEMPLATE """{reg.template}"""' in text and "Today Date: \" }}{{ currentDate }}" in reg.template
    assert "\n# The model's chat template writes today's date like '27 Nov 2031' (%d %b %Y)" in text
    gemma3 = next(e["template"] for e in json.loads((CORPUS / "hf-ollama-utils-automap.json").read_text())
                  if "library/gemma3:1b" in e["models"])
    (reg,) = register_variants(sorted(gguf_dir.glob("*Q8_0.gguf")), url=standin.url, chat_template=gemma3,
                               smoke=False)
    assert reg.warnings == [] and "{{ .System }}" in reg.template  # the system prompt is kept
    assert f'TEMPLATE """{reg.template}"""' in reg.modelfile.read_text()


def test_the_modelfile_is_written_beside_a_symlinked_gguf_not_beside_its_target(gguf_dir, standin, tmp_path):
    target = next(gguf_dir.glob("*Q8_0.gguf"))
    links = tmp_path / "links"
    links.mkdir()
    link = links / "mine-Q8_0.gguf"
    link.symlink_to(target)
    (reg,) = register_variants(link, url=standin.url, chat_template=CHATML_JINJA, smoke=False)
    assert reg.modelfile == links / "mine-Q8_0.gguf.Modelfile" and reg.modelfile.is_file()
    assert not (gguf_dir / f"{target.name}.Modelfile").exists()
    assert "FROM ./mine-Q8_0.gguf\n" in reg.modelfile.read_text()


def test_transient_503s_are_retried_until_they_pass(gguf_dir, standin):
    standin.fail(2, 503, paths=("/api/create",))
    standin.fail(1, 503, paths=("/api/blobs/",))
    regs = register_variants(sorted(gguf_dir.glob("*F16.gguf")), url=standin.url)
    assert regs[0].status == "created"
    assert len(standin.requests_to("POST", "/api/create")) == 3


def test_a_server_that_keeps_failing_gives_up_after_three_attempts(gguf_dir, standin):
    standin.fail(10, 503, paths=("/api/create",))
    with pytest.raises(TransientError, match="503"):
        register_variants(sorted(gguf_dir.glob("*F16.gguf")), url=standin.url)
    assert len(standin.requests_to("POST", "/api/create")) == 3


def test_unreachable_ollama_is_skipped_but_modelfiles_are_written(gguf_dir, standin):
    dead = standin.url
    standin.__exit__(None, None, None)
    regs = register_variants(gguf_dir, url=dead)
    assert [r.status for r in regs] == [f"skipped: Ollama not reachable at {dead}"] * 3
    assert all(r.modelfile.is_file() for r in regs)


def test_a_rejected_modelfile_names_the_variant(gguf_dir, standin):
    standin.create_error = "template: :3: unexpected \"}\" in operand"
    with pytest.raises(PosttrainError) as e:
        register_variants(sorted(gguf_dir.glob("*Q4_K_M.gguf")), url=standin.url)
    assert "Q4_K_M.gguf" in e.value.message and "unexpected" in e.value.message
    assert not isinstance(e.value, TransientError)


def test_a_model_too_large_to_load_names_the_variant(gguf_dir, standin):
    standin.chat_error = (500, "model requires more system memory (12.0 GiB) than is available (1.5 GiB)")
    with pytest.raises(PosttrainError) as e:
        register_variants(sorted(gguf_dir.glob("*F16.gguf")), url=standin.url)
    assert "F16.gguf" in e.value.message and "more system memory" in e.value.message
    assert len(standin.requests_to("POST", "/api/chat")) == 1  # not retried


def test_a_model_posttrain_did_not_create_is_never_replaced_or_deleted(gguf_dir, standin, store):
    f16 = sorted(gguf_dir.glob("*F16.gguf"))[0]
    client = ollama.Client(host=standin.url)
    digest = client.create_blob(f16)
    name = register_variants([f16], url=standin.url, smoke=False)[0].name  # no store: nothing recorded
    client.create(model=name, files={f16.name: digest}, parameters={"temperature": 1.5})  # the user's own
    with pytest.raises(PosttrainError, match="not created by posttrain"):
        register_variants([f16], url=standin.url, store=store)
    assert standin.models[name].parameters == {"temperature": 1.5}
    with pytest.raises(PosttrainError, match="did not create"):
        unregister(standin.url, store, [name])
    assert name in standin.models


def test_unregister_deletes_only_what_posttrain_registered(gguf_dir, standin, store):
    regs = register_variants(gguf_dir, url=standin.url, store=store, smoke=False)
    deleted = unregister(standin.url, store)
    assert sorted(deleted) == sorted(r.name for r in regs)
    assert standin.models == {}
    assert [r.body["model"] for r in standin.requests_to("DELETE", "/api/delete")] == sorted(deleted)
    assert store.query("SELECT * FROM registrations") == []


def test_resolve_finds_the_gguf_blob_behind_an_ollama_name(gguf_dir, standin):
    reg = register_variants(sorted(gguf_dir.glob("*Q8_0.gguf")), url=standin.url, smoke=False)[0]
    path = resolve_ollama_gguf(reg.name, standin.url)
    assert path is not None and _sha(path) == reg.digest
    assert resolve_ollama_gguf(reg.name.removesuffix(":latest"), standin.url) == path
    assert resolve_ollama_gguf("no-such-model", standin.url) is None
    assert resolve_ollama_gguf(reg.name, "http://127.0.0.1:9") is None


def test_register_command_prints_a_table(gguf_dir, standin, tmp_path):
    from posttrain.cli import app

    result = CliRunner().invoke(app, ["register", str(gguf_dir), "--ollama", standin.url, "--name", "Demo",
                                      "--param", "temperature=0.3", "--home", str(tmp_path / "home")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for quant in ("f16", "q8_0", "q4_k_m"):
        assert f"demo_{quant}:latest" in result.output
    assert "uploaded" in result.output and "not set" in result.output
    assert all(m.parameters["temperature"] == 0.3 for m in standin.models.values())
    again = CliRunner().invoke(app, ["register", str(gguf_dir), "--ollama", standin.url, "--name", "Demo",
                                     "--param", "temperature=0.3", "--home", str(tmp_path / "home")],
                               env={"COLUMNS": "200"})
    assert again.output.count("unchanged") == 3 and "reused" in again.output


def test_every_family_template_is_detected_from_its_markers():
    samples = {
        "chatml": CHATML_JINJA,
        "llama3": "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}",
        "gemma": "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}",
        "mistral": "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% endif %}{% endfor %}",
        "phi3": "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}{{ '<|user|>' }}",
    }
    from posttrain.serve import detect_family

    assert {detect_family(t).name for t in samples.values()} == {f.name for f in FAMILIES}
    for name, template in samples.items():
        assert detect_family(template).name == name
    llama2 = "[INST] <<SYS>>\\n{{ system }}\\n<</SYS>>\\n\\n{{ user }} [/INST]"
    zephyr = "<|user|>\\n{{ content }}</s>\\n<|assistant|>"
    assert detect_family(llama2) is None and detect_family(zephyr) is None and detect_family(None) is None


def test_the_chat_template_in_the_gguf_header_is_used_when_no_checkpoint_is_at_hand(tiny_spm, tmp_path, standin):
    from posttrain.convert import convert_checkpoint

    ckpt = tmp_path / "ckpt-llama3"
    shutil.copytree(tiny_spm, ckpt)
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    config["chat_template"] = (CORPUS / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
    (ckpt / "tokenizer_config.json").write_text(json.dumps(config))
    result = convert_checkpoint(ckpt, tmp_path / "out", ["f16"])
    lone = tmp_path / "lone" / "renamed-F16.gguf"  # no manifest beside it: only the GGUF header knows
    lone.parent.mkdir()
    shutil.copy(result.variants[0].path, lone)
    (reg,) = register_variants(lone, url=standin.url, smoke=False)
    assert reg.name == "renamed_f16:latest" and reg.quant == "F16"
    assert reg.template_family == "derived"
    assert standin.models[reg.name].template == reg.template and "<|start_header_id|>" in reg.template
    assert standin.models[reg.name].parameters["stop"] == ["<|eot_id|>", "</s>"]
    # Llama 3.1's Jinja (now in the GGUF) declares tools: Ollama >= 0.30 would render with it instead, and
    # the Modelfile says so and how to choose
    modelfile = reg.modelfile.read_text()
    assert "render chats with the GGUF's own chat template instead" in modelfile
    assert "OLLAMA_GO_TEMPLATE=1" in modelfile and reg.warnings == []
    # a template given here that is not the GGUF's: Ollama >= 0.30 would use the other one, a warning says so
    (other,) = register_variants(lone, url=standin.url, smoke=False, chat_template=CHATML_JINJA)
    assert any("not the one this TEMPLATE follows" in w for w in other.warnings)


def test_model_output_is_shown_literally_never_as_terminal_markup(gguf_dir, standin, tmp_path):
    from posttrain.cli import app

    standin.reply = "[bold red]pwned[/bold red] \x1b[2J"
    result = CliRunner().invoke(app, ["register", str(sorted(gguf_dir.glob("*F16.gguf"))[0]), "--ollama",
                                      standin.url, "--home", str(tmp_path / "home")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "[bold red]pwned[/bold red]" in result.output
    assert "\x1b[2J" not in result.output


def test_the_pipeline_registers_the_variants_its_convert_step_made(gguf_dir, standin, store, tiny_spm):
    # The register step gets convert's own record (paths, quants, sha256): nothing rediscovered.
    from posttrain.contracts import ConvertOut
    from posttrain.convert import read_manifest
    from posttrain.pipeline import RunContext, RunSpec, Stages, load_config

    manifest = read_manifest(gguf_dir / "manifest.json")
    convert = ConvertOut(model_name=manifest.model_name, manifest=manifest.path, variants=manifest.variants)
    config = load_config(discover=False, ollama={"url": standin.url})
    spec = RunSpec("r1", str(tiny_spm), gguf_dir.parent / "run")
    ctx = RunContext(spec, store, {"convert": convert}, {}, None)
    out = Stages(config).register(ctx)
    names = sorted(r.name for r in out.registrations)
    assert names == sorted(f"{manifest.model_name}_{v.quant.lower()}:latest" for v in manifest.variants)
    assert all(r.status in ("created", "updated") for r in out.registrations), out
