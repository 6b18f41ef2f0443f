"""Bad input and faults through the real CLI (a subprocess running `python -m posttrain`): each
failure is one line on stderr, no traceback, the documented exit code, and nothing left behind.
One section per category of issue 11."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.errors import PosttrainError


def posttrain(*args: object, cwd: Path, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "POSTTRAIN_HOME": str(home or cwd / "home"), "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "posttrain", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def one_line_error(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    """The single `error: …` line the CLI printed; fails unless that is all it printed on stderr."""
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for folders): compared before and after a command."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------- 1. user data is never destroyed


def test_make_tiny_refuses_a_folder_it_did_not_write(tmp_path):
    target = tmp_path / "experiments"
    target.mkdir()
    (target / "notes.txt").write_text("three weeks of results")
    before = tree(tmp_path)
    line = one_line_error(posttrain("make-tiny", target, cwd=tmp_path))
    assert str(target) in line and "--force" in line and "nothing was changed" in line
    assert tree(tmp_path) == before  # not even a temporary folder is left


def test_make_tiny_refuses_to_replace_a_file(tmp_path):
    (tmp_path / "model").write_text("mine")
    before = tree(tmp_path)
    line = one_line_error(posttrain("make-tiny", tmp_path / "model", cwd=tmp_path))
    assert "is not a folder" in line
    assert tree(tmp_path) == before


def test_make_tiny_replaces_only_its_own_unchanged_output(tmp_path):
    from posttrain.tiny import make_tiny

    out = make_tiny(tmp_path / "tiny")
    make_tiny(out, seed=1)  # its own, unchanged output: replaced without --force
    (out / "my-notes.txt").write_text("keep me")
    with pytest.raises(PosttrainError, match="did not write"):
        make_tiny(out)
    assert (out / "my-notes.txt").read_text() == "keep me"
    make_tiny(out, force=True)
    assert not (out / "my-notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no .partial or .old left beside it


@pytest.mark.parametrize("foreign", ["x-F16.gguf", "manifest.json"])
def test_convert_refuses_to_replace_files_it_did_not_write(tiny_spm, tmp_path, foreign):
    out = tmp_path / "out"
    out.mkdir()
    (out / foreign).write_text("the user's own file")
    before = tree(tmp_path)
    line = one_line_error(posttrain("convert", tiny_spm, "--out", out, "-q", "f16", "--name", "x", cwd=tmp_path))
    assert foreign in line and "posttrain did not write" in line and "--force" in line
    assert tree(tmp_path) == before


def test_convert_replaces_what_its_manifest_claimed_before_a_crash(tiny_spm, tmp_path):
    # A run killed while converting leaves the name claimed in the manifest ("pending") and maybe a file.
    out = tmp_path / "out"
    out.mkdir()
    (out / "x-F16.gguf").write_bytes(b"half a file")
    (out / "manifest.json").write_text(json.dumps({"schema": "posttrain.convert/1", "pending": ["x-F16.gguf"],
                                                   "variants": {}}))
    proc = posttrain("convert", tiny_spm, "--out", out, "-q", "f16", "--name", "x", "--no-verify", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "x-F16.gguf").read_bytes()[:4] == b"GGUF"
    manifest = json.loads((out / "manifest.json").read_text())
    assert "pending" not in manifest and manifest["variants"]["F16"]["path"] == "x-F16.gguf"


def test_unknown_tokenizer_kind_is_a_usage_error(tmp_path):
    proc = posttrain("make-tiny", tmp_path / "x", "--tokenizer", "wordpiece", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "wordpiece" in proc.stderr
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- 2. one error boundary


def test_corrupt_store_is_one_line_with_path_and_remedy(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "posttrain.db").write_bytes(b"this is not sqlite " * 100)
    before = tree(tmp_path)
    line = one_line_error(posttrain("runs", "--home", home, cwd=tmp_path))
    assert str(home / "posttrain.db") in line and "move it aside" in line
    assert tree(tmp_path) == before


def test_output_path_under_a_file_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    before = tree(tmp_path)
    line = one_line_error(posttrain("init", tmp_path / "taken" / "posttrain.toml", cwd=tmp_path))
    assert "taken" in line
    assert tree(tmp_path) == before


def test_convert_out_pointing_at_a_file_is_one_line(tiny_spm, tmp_path):
    (tmp_path / "gguf").write_text("a file, not a folder")
    before = tree(tmp_path)
    line = one_line_error(posttrain("convert", tiny_spm, "--out", tmp_path / "gguf", "-q", "f16", cwd=tmp_path))
    assert str(tmp_path / "gguf") in line and "already exists" in line
    assert tree(tmp_path) == before


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="root writes through read-only permissions; Windows ignores a folder's read-only mode")
def test_read_only_folder_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    line = one_line_error(posttrain("init", ro / "posttrain.toml", cwd=tmp_path))
    assert "permission denied" in line and str(ro) in line


def test_malformed_results_json_names_the_file_and_line(tmp_path):
    run = tmp_path / "lm" / "model"
    run.mkdir(parents=True)
    (run / "results_2026-01-01T00-00-00.json").write_text('{"results": {\n  oops')
    (run / "samples_t_2026-01-01T00-00-00.jsonl").write_text('{"doc_id": 0, "acc": 1.0}\n')
    line = one_line_error(posttrain("compare", tmp_path / "lm", tmp_path / "lm", cwd=tmp_path))
    assert "results_2026-01-01T00-00-00.json:2:" in line and "rerun lm-eval" in line


def test_malformed_config_toml_names_the_file(tmp_path):
    (tmp_path / "posttrain.toml").write_text("[watch\nsettle_s = 1\n")
    line = one_line_error(posttrain("status", "--config", tmp_path / "posttrain.toml", cwd=tmp_path))
    assert "posttrain.toml" in line and "line 1" in line


def _raised(action) -> BaseException:
    try:
        action()
    except BaseException as e:  # noqa: BLE001 - the point is to capture whatever the library raises
        return e
    raise AssertionError("expected an exception")


def _pydantic_error():
    from pydantic import BaseModel

    class Settings(BaseModel):
        num_ctx: int

    return Settings(num_ctx="many")


@pytest.mark.parametrize(("make", "expected"), [
    (lambda: _raised(lambda: open("/no/such/dir/x.toml")), "/no/such/dir/x.toml: no such file or directory — check"),
    (lambda: OSError(errno.ENOSPC, "No space left on device", "/data/x.gguf"),
     "/data/x.gguf: no space left on the device — free some space"),
    (lambda: PermissionError(errno.EACCES, "Permission denied", "/ro/x"), "/ro/x: permission denied — choose"),
    (lambda: _raised(lambda: os.rename("/no/a", "/no/b")), "/no/a → /no/b: no such file"),
    (lambda: _raised(lambda: sqlite3.connect(":memory:").execute("not sql")), "posttrain's store (posttrain.db) failed"),
    (lambda: sqlite3.OperationalError("database is locked"), "is busy: database is locked — try again"),
    (lambda: _raised(lambda: json.loads('{"a": 1,\n oops}')), "malformed JSON at line 2, column 2"),
    (lambda: _raised(lambda: tomllib.loads("seed = \n")), "malformed TOML: "),
    (lambda: _raised(lambda: yaml.safe_load("task: [mmlu\n")), "malformed YAML: "),
    (lambda: _raised(_pydantic_error), "invalid Settings: num_ctx: Input should be a valid integer"),
    (lambda: ValueError("tokenizer must be 'spm' or 'bpe'"), "tokenizer must be 'spm' or 'bpe'"),
])
def test_expected_failures_are_explained_in_one_line(make, expected):
    from posttrain.cli._errors import explain

    line = explain(make())
    assert line is not None and "\n" not in line and expected in line, line


def test_a_bug_is_not_explained_away():
    from posttrain.cli._errors import explain

    assert explain(_raised(lambda: {}["missing"])) is None
    assert explain(_raised(lambda: None.attribute)) is None


def test_unexpected_errors_name_a_log_holding_the_traceback(tmp_path, monkeypatch):
    from posttrain.cli._errors import failure_line

    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path / "home"))
    try:
        {}["missing"]
    except KeyError as e:
        line, code = failure_line(e)
    assert code == 1 and "\n" not in line and "this is a bug in posttrain" in line
    logs = list((tmp_path / "home" / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in line
    assert "Traceback" in logs[0].read_text() and "KeyError: 'missing'" in logs[0].read_text()


def test_crash_log_falls_back_to_the_temp_dir_when_home_is_not_writable(tmp_path, monkeypatch):
    from posttrain.cli._errors import failure_line

    (tmp_path / "home").write_text("a file where the home folder should be")
    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    line, _ = failure_line(RuntimeError("boom"))
    logs = list((tmp_path / "tmp").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in line


# ---------------------------------------------------------------- 3. paths are never read as markup


@pytest.mark.parametrize("name", ["[/x]", "[bold red]x[/bold red]", "a[", "x\\"])
def test_paths_that_look_like_markup_are_printed_as_they_are(tmp_path, name):
    missing = tmp_path / name / "final_model"
    proc = posttrain("check", missing, "--settle", "0", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stderr == ""
    assert proc.stdout.strip() == f"incomplete: {missing} is not a directory"


@settings(max_examples=60, deadline=None)
@given(name=st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=20)
       .filter(lambda n: n not in (".", "..")))
def test_any_path_is_printed_exactly_as_given(tmp_path_factory, name):
    from typer.testing import CliRunner

    from posttrain.cli import app

    missing = tmp_path_factory.getbasetemp() / "no-such" / name
    result = CliRunner().invoke(app, ["check", str(missing), "--settle", "0"])
    assert result.exit_code == 1 and (result.exception is None or isinstance(result.exception, SystemExit))
    line = result.stdout.removesuffix("\n")
    assert line.isprintable()  # one line; a control character (\r, ESC) is spelled out, never sent raw
    if str(missing).isprintable():
        assert line == f"incomplete: {missing} is not a directory"
    else:
        assert line.startswith("incomplete: ") and line.endswith(" is not a directory")


def test_error_lines_show_markup_in_paths_literally(tmp_path):
    missing = tmp_path / "[bold red]x[/bold red]" / "m-Q8_0.gguf"
    line = one_line_error(posttrain("register", missing, "--ollama", "http://127.0.0.1:9", cwd=tmp_path))
    assert line == f"error: {missing} does not exist — give a GGUF file or the directory convert wrote"


# ---------------------------------------------------------------- 4. the detector is not fooled


def _checkpoint(root: Path, index: object) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (root / "tokenizer.json").write_text("{}")
    header = json.dumps({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}).encode()
    shard = struct.pack("<Q", len(header)) + header + b"\0" * 4
    (root / "model-1.safetensors").write_bytes(shard)
    (root.parent / "outside.safetensors").write_bytes(shard)
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    return root


@pytest.mark.parametrize(("index", "reason"), [
    ({"weight_map": ["model-1.safetensors"]}, "has no weight_map"),
    ({"weight_map": {"w": "../outside.safetensors"}}, "lies outside the checkpoint directory"),
    ({"weight_map": {"w": "config.json"}}, "not a .safetensors file"),
])
def test_check_says_incomplete_for_odd_indexes(tmp_path, index, reason):
    ckpt = _checkpoint(tmp_path / "final_model", index)
    proc = posttrain("check", ckpt, "--settle", "0", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr == "" and "Traceback" not in proc.stdout
    assert proc.stdout.startswith("incomplete: ") and reason in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1


# ---------------------------------------------------------------- 5. files stay in the chosen place


def _ckpt_with_template(root: Path) -> Path:
    root.mkdir()
    (root / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    return root


def test_register_refuses_a_manifest_leading_outside_its_folder(tmp_path):
    gguf_dir = tmp_path / "out" / "gguf"
    gguf_dir.mkdir(parents=True)
    (tmp_path / "victim-Q8_0.gguf").write_bytes(b"GGUF not really")
    (gguf_dir / "manifest.json").write_text(json.dumps(
        {"schema": "posttrain.convert/1", "model_name": "m",
         "variants": {"Q8_0": {"path": "../../victim-Q8_0.gguf", "sha256": "0" * 64, "size_bytes": 15}}}))
    before = tree(tmp_path)
    line = one_line_error(posttrain("register", gguf_dir, "--ollama", "http://127.0.0.1:9", "--home",
                                    tmp_path / "out" / "home", cwd=tmp_path))
    assert "points outside" in line
    after = {k: v for k, v in tree(tmp_path).items() if not k.startswith("out/home")}
    assert after == before  # no Modelfile beside the victim


def test_register_never_replaces_a_modelfile_it_did_not_write(tmp_path):
    gguf = tmp_path / "m-Q8_0.gguf"
    gguf.write_bytes(b"GGUF not really")
    (tmp_path / "m-Q8_0.gguf.Modelfile").write_text("FROM ./m-Q8_0.gguf\nSYSTEM my carefully tuned prompt\n")
    ckpt = _ckpt_with_template(tmp_path / "ckpt")
    before = tree(tmp_path)
    line = one_line_error(posttrain("register", gguf, "--ollama", "http://127.0.0.1:9", "--checkpoint", ckpt,
                                    "--home", tmp_path / "home", cwd=tmp_path))
    assert "m-Q8_0.gguf.Modelfile exists and posttrain did not write it" in line
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("home")} == before


@pytest.mark.parametrize("system", ['be brief"""\nFROM /etc/passwd\nSYSTEM """x', "bell \a"])
def test_register_refuses_a_system_prompt_a_modelfile_cannot_quote(tmp_path, system):
    gguf = tmp_path / "m-Q8_0.gguf"
    gguf.write_bytes(b"GGUF not really")
    ckpt = _ckpt_with_template(tmp_path / "ckpt")
    line = one_line_error(posttrain("register", gguf, "--ollama", "http://127.0.0.1:9", "--system", system,
                                    "--checkpoint", ckpt, "--home", tmp_path / "home", cwd=tmp_path))
    assert "system prompt" in line
    assert not list(tmp_path.glob("*.Modelfile"))


def test_register_quotes_a_system_prompt_with_quotes_and_lines(tmp_path):
    gguf = tmp_path / "m-Q8_0.gguf"
    gguf.write_bytes(b"GGUF not really")
    ckpt = _ckpt_with_template(tmp_path / "ckpt")
    proc = posttrain("register", gguf, "--ollama", "http://127.0.0.1:9", "--system", 'Say "hi".\nThen stop.',
                     "--checkpoint", ckpt, "--home", tmp_path / "home", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "m-Q8_0.gguf.Modelfile").read_text()
    assert 'SYSTEM """Say "hi".\nThen stop."""\n' in text
    assert sum(line.startswith("FROM ") for line in text.splitlines()) == 1


def test_convert_keeps_a_hostile_name_inside_out(tiny_spm, tmp_path):
    out = tmp_path / "a" / "b" / "gguf"
    proc = posttrain("convert", tiny_spm, "--out", out, "-q", "f16", "--no-verify", "--name", "../../x",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.gguf"))
    assert made == [Path("a/b/gguf/x-F16.gguf")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variants"]["F16"]["path"] == "x-F16.gguf" and (out / "x-F16.gguf").is_file()
