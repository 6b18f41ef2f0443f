"""Ollama model names stay within Ollama's rules whatever the checkpoint or user calls the model."""

from __future__ import annotations

import pytest

from posttrain.serve import full_name, sanitize_part, variant_name
from posttrain.serve._names import MAX_PART, is_valid_part

HOSTILE = ["../../x", "my model v2", "MyModel-UPPER", "modèle-été-ü", "模型", "a" * 300, "", ".", "-x-",
           "a/b:c", "x;rm -rf /", "..", "\x00\x1b[31mred", "tab\tnew\nline", "dots...and..more"]


@pytest.mark.parametrize("raw", HOSTILE)
@pytest.mark.parametrize("quant", ["Q4_K_M", "f16", "IQ2_XXS"])
def test_hostile_names_become_valid_ollama_names(raw, quant):
    name = variant_name(raw, quant)
    model, _, tag = name.partition(":")
    assert tag == "latest"
    assert is_valid_part(model), name
    assert len(model) <= MAX_PART
    assert model.endswith("_" + quant.lower())  # the quant is never truncated away
    assert name == name.lower()
    assert "/" not in name and ".." not in name


def test_readable_names_keep_their_meaning():
    assert variant_name("../../x", "Q4_K_M") == "model-x_q4_k_m:latest"
    assert variant_name("My Model v2", "Q8_0") == "my-model-v2_q8_0:latest"
    assert variant_name("modèle-été", "F16") == "modele-ete_f16:latest"
    assert variant_name("SmolLM2-135M-Instruct", "Q4_K_M") == "smollm2-135m-instruct_q4_k_m:latest"


def test_long_names_are_cut_but_stay_distinct():
    a = variant_name("a" * 300 + "one", "Q4_K_M")
    b = variant_name("a" * 300 + "two", "Q4_K_M")
    assert a != b
    assert len(a.partition(":")[0]) == MAX_PART


def test_user_tags_are_kept_and_sanitised():
    assert full_name("Team Model:V1") == "team-model:v1"
    assert full_name("plain") == "plain:latest"
    assert sanitize_part("ok_name.v1") == "ok_name.v1"
