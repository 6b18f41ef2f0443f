"""What a user types as a model is read once (posttrain._model_spec), and each caller refuses a wrong
one in its own words: evaluate's `resolve_model`, the pipeline's `Baseline`, `posttrain eval`'s folder.
No model is loaded here."""

from __future__ import annotations

import pytest

from posttrain._model_spec import ModelSpec
from posttrain.errors import PosttrainError
from posttrain.evaluate import resolve_model
from posttrain.pipeline import Baseline


@pytest.fixture
def things(tmp_path):
    (tmp_path / "m-Q8_0.gguf").write_bytes(b"GGUF")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "a.gguf").write_bytes(b"GGUF")
    return tmp_path


def test_each_kind_and_its_folder_name(things):
    kinds = {name: ModelSpec.parse(things / name).kind
             for name in ("m-Q8_0.gguf", "notes.txt", "ckpt", "bare", "absent")}
    assert kinds == {"m-Q8_0.gguf": "gguf", "notes.txt": "file", "ckpt": "checkpoint", "bare": "directory",
                     "absent": "missing"}
    ollama = ModelSpec.parse("ollama:llama3:8b")
    assert (ollama.kind, ollama.ollama_name, ollama.path, ollama.label) == ("ollama", "llama3:8b", None, "llama3_8b")
    assert ModelSpec.parse(things / "m-Q8_0.gguf").label == "m-Q8_0"
    assert ModelSpec.parse("ollama:../../x").label == "x"  # one path component, whatever was typed


def test_resolve_model_refusals_keep_their_words(things):
    with pytest.raises(PosttrainError, match="is a directory without config.json") as e:
        resolve_model(things / "bare")
    assert "give one of its GGUF files" in e.value.remedy
    with pytest.raises(PosttrainError, match="not found") as e:
        resolve_model(things / "absent")
    assert "ollama:NAME" in e.value.remedy
    with pytest.raises(PosttrainError, match="not a GGUF file"):
        resolve_model(things / "notes.txt")  # any file is read: its first bytes decide


def test_baseline_refusals_keep_their_words(things):
    assert Baseline.parse("ollama:x").is_ollama and Baseline.parse(str(things / "m-Q8_0.gguf")).is_gguf
    assert Baseline.parse(str(things / "ckpt")).is_checkpoint
    for name, words in (("absent", "not found"), ("notes.txt", "is a file but not a .gguf"),
                        ("bare", "is a directory without config.json")):
        with pytest.raises(PosttrainError, match=words):
            Baseline.parse(str(things / name)).check()
    Baseline.parse(str(things / "absent")).check(may_appear=True)  # a watcher's baseline may come later
    assert Baseline.parse(str(things / "absent")).absolute() == str(things / "absent")
