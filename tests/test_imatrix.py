"""Importance matrices with llama.cpp's own tools, built from the runtime's sdist, on a tiny model.

The tools are built for real into the user cache (`posttrain.llamacpp`, the default location): the
first run on a machine compiles llama-imatrix and llama-quantize (minutes), every later run reuses them.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from posttrain.errors import PosttrainError
from posttrain.tiny import corpus
from test_evaluate_offline import write_hellaswag


@pytest.fixture(scope="module")
def tools():
    from posttrain.llamacpp import find_llama_tools

    return find_llama_tools()


def test_the_built_tools_are_the_runtimes_version_and_cached(tools):
    from posttrain.llamacpp import find_llama_tools
    from posttrain.llamacpp._tools_build import runtime_llama_version, source_tag
    from posttrain.toolchain import llama_cpp_python_version

    assert tools.source == "sdist"
    assert tools.llama_version == runtime_llama_version()
    assert tools.commit == source_tag(llama_cpp_python_version())
    meta = json.loads((tools.bin_dir.parent / "provenance.json").read_text())
    assert meta["llama_cpp_python"] == llama_cpp_python_version() and "-DGGML_NATIVE=OFF" in meta["cmake_isa"]
    assert find_llama_tools(build=False) == tools  # the cached build, found again without building


def _doctor(*args: str, env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "posttrain", "doctor", "--no-selftest", "--ollama", "http://127.0.0.1:9",
                           *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "250", **(env or {})})
    return next((ln for ln in proc.stdout.splitlines() if "imatrix tools" in ln), proc.stdout + proc.stderr)


def test_doctor_says_whether_the_tools_are_built_and_builds_them_when_asked(tools, tmp_path):
    # --build-imatrix-tools with a build in the cache: found and checked, not rebuilt (seconds).
    line = _doctor("--build-imatrix-tools")
    assert " ok " in line and tools.llama_version in line and tools.commit in line, line
    # With an empty cache (a new machine): not built, which is no failure, and the command that builds them.
    line = _doctor(env={"POSTTRAIN_CACHE": str(tmp_path / "empty-cache")})
    assert "not built" in line and "--build-imatrix-tools" in line, line


def _fake_tool(path, version_line: str) -> None:
    """A real executable that answers --version like llama.cpp's tools do, with another version."""
    path.write_text(f"#!{sys.executable}\nimport sys\nprint({version_line!r}, file=sys.stderr)\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.skipif(os.name != "posix", reason="a script with a #! line is an executable on POSIX")
def test_a_tool_of_another_version_is_refused_in_one_line(tmp_path, tools):
    from posttrain.llamacpp import find_llama_tools
    from posttrain.llamacpp._tools_build import TOOLS, check_tool, source_tag
    from posttrain.toolchain import llama_cpp_python_version

    for name in TOOLS:
        _fake_tool(tmp_path / name, "version: 0.4.0-dev (build 4242, commit deadbee)")
    with pytest.raises(PosttrainError, match="is llama.cpp 0.4.0-dev .*refusing to mix versions") as err:
        find_llama_tools(tmp_path)
    assert "\n" not in err.value.one_line()
    # The runtime's llama.cpp version but not built from this runtime's sdist: refused as well.
    _fake_tool(tmp_path / "llama-imatrix", f"version: {tools.llama_version} (build 0, commit llama-cpp-python-0.0.1)")
    with pytest.raises(PosttrainError, match="refusing to mix versions"):
        check_tool(tmp_path / "llama-imatrix", expected_commit=source_tag(llama_cpp_python_version()))


def test_the_importance_matrix_is_computed_once_per_model_and_text(tools, tiny_gguf, tmp_path):
    from posttrain.convert import compute_imatrix

    text = tmp_path / "text.txt"
    text.write_text("\n".join(corpus(600, seed=3)))
    first = compute_imatrix(tiny_gguf["F16"], text, tmp_path / "cache", chunk=64, tools=tools)
    assert first.path.is_file() and first.path.stat().st_size > 0 and not first.cached
    again = compute_imatrix(tiny_gguf["F16"], text, tmp_path / "cache", chunk=64, tools=tools)
    assert again.cached and again.sha256 == first.sha256 and again.path == first.path
    # Computed afresh from the same text in another folder: the same bytes (the text's folder is not in them).
    elsewhere = tmp_path / "elsewhere" / "text.txt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(text.read_bytes())
    fresh = compute_imatrix(tiny_gguf["F16"], elsewhere, tmp_path / "cache2", chunk=64, tools=tools)
    assert not fresh.cached and fresh.sha256 == first.sha256

    # Variants made with it are content-addressed: the same F16 and matrix reuse the file, another matrix remakes it.
    from posttrain.convert import BuiltVariant, make_imatrix_variants, sha256_file

    f16 = BuiltVariant("F16", tiny_gguf["F16"], sha256_file(tiny_gguf["F16"]), tiny_gguf["F16"].stat().st_size, 0.0,
                       "converter")
    made = make_imatrix_variants(f16, ["Q4_K_M"], first, tmp_path / "variants", "tiny", tools=tools)
    assert [v.quant for v in made] == ["Q4_K_M-imatrix"] and not made[0].cached
    assert made[0].path.name == "tiny-Q4_K_M-imatrix.gguf"
    reused = make_imatrix_variants(f16, ["Q4_K_M"], again, tmp_path / "variants", "tiny", tools=tools)
    assert reused[0].cached and reused[0].sha256 == made[0].sha256
    text.write_text("\n".join(corpus(600, seed=4)))
    other = compute_imatrix(tiny_gguf["F16"], text, tmp_path / "cache", chunk=64, tools=tools)
    remade = make_imatrix_variants(f16, ["Q4_K_M"], other, tmp_path / "variants", "tiny", tools=tools)
    assert other.sha256 != first.sha256 and not remade[0].cached and remade[0].sha256 != made[0].sha256

    text.write_text("too short")
    with pytest.raises(PosttrainError, match="too short .* is \\d+ tokens, and llama-imatrix needs at least two chunks "
                                             "of 64 \\(128 tokens\\)"):
        compute_imatrix(tiny_gguf["F16"], text, tmp_path / "cache", chunk=64, tools=tools)


def test_the_two_chunk_minimum_is_counted_as_llama_imatrix_counts_it(tools, tiny_gguf, tmp_path):
    """One token short of two chunks is refused before llama-imatrix runs (its own message can be lost
    from its log); exactly two chunks is computed. The count is llama.cpp's, BOS included."""
    from posttrain import llamacpp
    from posttrain.convert import compute_imatrix

    text = tmp_path / "text.txt"
    words = " ".join(corpus(200, seed=7)).split()
    sizes = {}
    for n in range(1, len(words)):
        sizes.setdefault(llamacpp.count_tokens(tiny_gguf["F16"], " ".join(words[:n])), n)
        if 129 in sizes:
            break
    short = next(c for c in (127, 126, 125) if c in sizes)
    text.write_text(" ".join(words[:sizes[short]]))
    with pytest.raises(PosttrainError, match=f"is {short} tokens"):
        compute_imatrix(tiny_gguf["F16"], text, tmp_path / "cache", chunk=64, tools=tools)
    assert not list((tmp_path / "cache").glob("*.log"))  # refused before llama-imatrix ran

    enough = next(c for c in (128, 129) if c in sizes)
    text.write_text(" ".join(words[:sizes[enough]]))
    assert compute_imatrix(tiny_gguf["F16"], text, tmp_path / "cache", chunk=64, tools=tools).path.is_file()


def test_ship_with_imatrix_text_measures_both_variants_side_by_side(tools, tiny_spm, tmp_path):
    data = tmp_path / "data"
    write_hellaswag(data, n=8)
    text = tmp_path / "heldout.txt"
    text.write_text("\n".join(corpus(1500, seed=11)))
    imatrix_text = tmp_path / "train-sample.txt"
    imatrix_text.write_text("\n".join(corpus(800, seed=5)))
    out = tmp_path / "out"
    env = {**os.environ, "POSTTRAIN_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "posttrain", "ship", str(tiny_spm), "--text", str(text),
                           "--imatrix-text", str(imatrix_text), "--tasks", "hellaswag", "--data-dir", str(data),
                           "-q", "f16,q8_0,q4_k_m", "--n-ctx", "64", "--max-tokens", "512", "--reps", "1",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    doc = json.loads((out / "ship.json").read_text())
    by_quant = {v["quant"]: v for v in doc["variants"]}
    # Q8_0 takes no importance matrix; Q4_K_M gets a twin made with it.
    assert sorted(by_quant) == ["F16", "Q4_K_M", "Q4_K_M-imatrix", "Q8_0"]
    plain, with_matrix = by_quant["Q4_K_M"], by_quant["Q4_K_M-imatrix"]
    assert with_matrix["imatrix"] and not plain["imatrix"]
    assert with_matrix["sha256"] != plain["sha256"]
    for v in (plain, with_matrix):  # both loaded and were measured against F16, for speed and on the task
        assert v["quality"]["kld_mean"] > 0 and v["speed"]["tg_tok_s"] > 0
    verdicts = {v["quant"]: v for v in doc["verdict"]["variants"]}
    assert "hellaswag" in verdicts["Q4_K_M-imatrix"]["tasks"]
    assert doc["imatrix"]["sha256"] and os.path.isfile(doc["imatrix"]["file"])
    assert doc["imatrix"]["tools"]["commit"] == tools.commit
    manifest = json.loads((tmp_path / "home" / "gguf" / doc["model_name"] / "imatrix" / "imatrix-variants.json")
                          .read_text())
    assert manifest["variants"]["Q4_K_M-imatrix"]["imatrix_sha256"] == doc["imatrix"]["sha256"]
    md = (out / "ship.md").read_text()
    rows = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| Q4_K_M")]
    assert rows == ["Q4_K_M", "Q4_K_M-imatrix"]  # side by side, the plain one first
    assert "importance matrix" in md and "Q4_K_M-imatrix" in proc.stdout  # the terminal's table too


def test_convert_with_an_imatrix_file_uses_the_built_quantizer(tools, tiny_spm, tiny_gguf, tmp_path):
    from posttrain.convert import compute_imatrix, convert_checkpoint, sha256_file

    text = tmp_path / "text.txt"
    text.write_text("\n".join(corpus(600, seed=3)))
    imatrix = compute_imatrix(tiny_gguf["F16"], text, tmp_path / "cache", chunk=64, tools=tools)
    result = convert_checkpoint(tiny_spm, tmp_path / "gguf", ["f16", "q4_k_m"], imatrix=imatrix.path, verify=False)
    made = result.variant("Q4_K_M")
    assert made.sha256 != sha256_file(tiny_gguf["Q4_K_M"])  # the matrix changed the weights
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["options"]["imatrix_sha256"] == imatrix.sha256
    assert "llama-cpp-python-" in (tmp_path / "gguf" / "convert-Q4_K_M.log").read_text()  # the built tool ran


def test_the_pipeline_passes_ship_imatrix_text_and_fingerprints_it(tmp_path):
    from posttrain.pipeline import load_config

    plain = load_config(discover=False, ship=True)
    with_text = load_config(discover=False, ship=True, ship_imatrix_text=str(tmp_path / "train.txt"))
    assert with_text.ship_imatrix_text == tmp_path / "train.txt"
    assert "imatrix_text" not in plain.fingerprint()["ship"]  # ladders without one keep their fingerprint
    assert with_text.fingerprint_sha256() != plain.fingerprint_sha256()
