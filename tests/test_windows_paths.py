"""Windows-style paths and Japanese names (issue 15), on what can run here.

A checkpoint at `学習 runs/モデル/final_model` (spaces, non-ASCII) goes through the real `check` and
`convert` commands and into Ollama (the stand-in) and a report: files and Ollama names are made safe,
two Japanese names never collapse into one, and the report shows the name its owner wrote, escaped.
Drive-letter paths are data here (a config value, a path recorded on Windows in a copied store).
What stays unverified: the same on a real Windows file system (drive letters, 260-char paths)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ollama_standin import OllamaStandin

from posttrain.errors import PosttrainError
from posttrain.paths import model_label, safe_name
from posttrain.pipeline import load_config
from posttrain.report import write_report
from posttrain.serve import register_variants
from posttrain.tiny import make_tiny


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True,
                          encoding="utf-8", cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def japanese_checkpoint(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("ja") / "学習 runs" / "モデル" / "final_model", tokenizer="spm")


def test_check_convert_register_and_report_keep_a_japanese_name(japanese_checkpoint, tmp_path):
    ckpt = japanese_checkpoint
    check = _cli("check", str(ckpt), cwd=tmp_path)
    assert check.returncode == 0, check.stderr

    out = tmp_path / "出力 gguf"
    convert = _cli("convert", str(ckpt), "--out", str(out), "-q", "f16", cwd=tmp_path)
    assert convert.returncode == 0, convert.stderr
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    name = manifest["model_name"]
    assert name == safe_name("モデル") and name.startswith("model-") and name != safe_name("実験")
    assert [p.name for p in out.glob("*.gguf")] == [f"{name}-F16.gguf"]
    assert manifest["checkpoint"] == str(ckpt.resolve())  # the original path, unmangled

    with OllamaStandin(tmp_path / "ollama") as ollama:
        [reg] = register_variants(out, url=ollama.url, smoke=False)
    assert reg.name == f"{name}_f16:latest" and reg.status == "created"
    assert reg.name.isascii()

    run = {"id": "r-ja", "checkpoint": manifest["checkpoint"], "model_name": name, "status": "succeeded"}
    variants = [{"quant": "F16", "path": str(out / f"{name}-F16.gguf")}]
    files = write_report(tmp_path / "レポート", compare={}, run=run, variants=variants, evals=[], steps=[],
                         environment={})
    html = files["html"].read_text(encoding="utf-8")
    assert "<h1>モデル</h1>" in html and "<title>posttrain report · モデル</title>" in html
    assert files["md"].read_text(encoding="utf-8").startswith("## posttrain report: モデル")
    assert json.loads(files["json"].read_text(encoding="utf-8"))["run"]["display_name"] == "モデル"


def test_a_windows_path_recorded_elsewhere_shows_its_own_name_escaped(tmp_path):
    checkpoint = r"D:\webdataset\モデル & 'v2' <b>\final_model"
    label = model_label(checkpoint)
    assert label == "モデル & 'v2' <b>"
    run = {"id": "r-win", "checkpoint": checkpoint, "model_name": safe_name(label)}
    files = write_report(tmp_path, compare={}, run=run, variants=[], evals=[], steps=[], environment={})
    html = files["html"].read_text(encoding="utf-8")
    assert "<h1>モデル &amp; &#39;v2&#39; &lt;b&gt;</h1>" in html and "<b>" not in html
    assert r"D:\webdataset\モデル &amp; &#39;v2&#39; &lt;b&gt;\final_model" in html
    md = files["md"].read_text(encoding="utf-8").splitlines()[0]
    assert "モデル" in md and "<b>" not in md


@pytest.mark.parametrize("path, label", [
    (r"D:\webdataset\exp1\final_model", "exp1"),
    (r"C:\Users\山田\runs\exp 2\checkpoint-500", "exp 2-checkpoint-500"),
    (r"D:\final_model", "final_model"),  # a drive is not a name
    ("/home/me/runs/モデル/final_model/", "モデル"),
])
def test_model_labels_read_either_separator(path, label):
    assert model_label(path) == label


def test_windows_paths_in_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good.toml"
    good.write_text("baseline = 'D:\\models\\ベース モデル\\final_model'\n"
                    'data_dir = "C:\\\\データ\\\\bench"\n', encoding="utf-8")
    config = load_config(good)
    assert config.baseline == r"D:\models\ベース モデル\final_model"
    assert str(config.data_dir) == r"C:\データ\bench"

    escaped = tmp_path / "escaped.toml"
    escaped.write_text('baseline = "D:\\webdataset\\run"\n', encoding="utf-8")
    with pytest.raises(PosttrainError, match="not valid TOML") as e:
        load_config(escaped)
    assert "single quotes" in e.value.remedy

    newline = tmp_path / "newline.toml"  # "\n" is a valid escape: the path silently gets a newline
    newline.write_text('data_dir = "D:\\new\\run"\n', encoding="utf-8")
    with pytest.raises(PosttrainError, match="control character.*single quotes"):
        load_config(newline)
