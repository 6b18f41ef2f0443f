"""Every reader of a JSON or TOML file that comes from outside, fed arbitrary bytes and structures:
it returns what it read or raises PosttrainError (one line for the user), never anything else.
And no reader lets a file name it read lead outside the folder it belongs to.

Readers covered: the pipeline config (`load_config`), compare's lm-eval folder readers
(`load_items`, `task_settings`), the convert manifest (as convert and register read it), local
benchmark JSONL files (`--data-dir`), the report's compare.json, a checkpoint's chat template, the
store file itself. The Modelfile writer
is checked against a port of Ollama's own Modelfile parser.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.errors import PosttrainError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)


def json_or_bytes(structured) -> st.SearchStrategy[bytes]:
    """Bytes of a JSON document drawn from `structured`, or arbitrary bytes, or JSON cut short."""
    encoded = structured.map(lambda v: json.dumps(v).encode())
    return st.one_of(encoded, st.binary(max_size=200), encoded.map(lambda b: b[: len(b) // 2]))


# ---------------------------------------------------------------- config (posttrain.toml)

toml_scalars = st.booleans() | st.integers(-10**6, 10**6) | st.floats(-1e6, 1e6, allow_nan=False) | \
    st.text(max_size=12) | st.lists(st.text(max_size=6) | st.integers(), max_size=3)
config_keys = st.sampled_from(["home", "quants", "tasks", "data_dir", "task_paths", "limit", "per_subject", "seed",
                               "baseline", "allow_pickle", "retries", "retry_backoff_s", "jobs", "nonsense"])
section_keys = st.sampled_from(["url", "temperature", "top_p", "num_ctx", "urls", "voice", "pattern",
                                "check_interval_s", "settle_s", "log_max_bytes", "log_backups", "typo"])


def toml_value(v) -> str:
    # JSON's literals for strings, numbers, booleans and arrays are valid TOML.
    return json.dumps(v)


@st.composite
def toml_documents(draw) -> str:
    lines = [f"{k} = {toml_value(draw(toml_scalars))}" for k in draw(st.lists(config_keys, max_size=4, unique=True))]
    for section in draw(st.lists(st.sampled_from(["ollama", "notify", "watch", "other"]), max_size=2, unique=True)):
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(draw(toml_scalars))}"
                  for k in draw(st.lists(section_keys, max_size=3, unique=True))]
    return "\n".join(lines) + "\n"


@FAST
@given(data=(toml_documents() | st.text(max_size=80)).map(str.encode)
       | st.binary(max_size=120).filter(lambda b: b.decode("utf-8", "ignore").encode() == b))
def test_any_config_file_loads_or_is_one_posttrain_error(data):
    from posttrain.pipeline import load_config

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "posttrain.toml"
        path.write_bytes(data)
        try:
            load_config(path)
        except PosttrainError as e:
            assert "\n" not in e.one_line()


def test_a_config_file_that_is_not_utf8_is_one_posttrain_error(tmp_path):
    from posttrain.pipeline import load_config

    (tmp_path / "posttrain.toml").write_bytes(b"seed = 1\n\x80\n")
    with pytest.raises(PosttrainError, match="posttrain.toml"):
        load_config(tmp_path / "posttrain.toml")


# ---------------------------------------------------------------- compare: lm-eval folders

DATE = "2026-01-01T00-00-00"
sample_like = st.fixed_dictionaries({}, optional={
    "doc_id": st.integers(-2, 5) | json_values, "doc": json_values, "target": json_values,
    "arguments": json_values | st.fixed_dictionaries({"gen_args_0": json_values}),
    "filtered_resps": json_values, "filter": json_values, "metrics": json_values | st.just(["acc"]),
    "acc": json_values | st.floats(0, 1), "doc_hash": json_values,
})
results_like = st.fixed_dictionaries({}, optional={
    "group_subtasks": json_values | st.just({"g": ["t", "g"], "t": ["g"]}), "configs": json_values,
    "versions": json_values, "n-shot": json_values, "model_name": json_values,
})


@FAST
@given(results=json_or_bytes(results_like | json_values),
       lines=st.lists(json_or_bytes(sample_like | json_values), min_size=1, max_size=4))
def test_any_lm_eval_folder_is_read_or_is_one_posttrain_error(results, lines):
    from posttrain.compare import load_items, task_settings

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "out" / "model"
        folder.mkdir(parents=True)
        (folder / f"results_{DATE}.json").write_bytes(results)
        (folder / f"samples_t_{DATE}.jsonl").write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
        for read in (lambda: load_items(str(Path(d) / "out")), lambda: task_settings(str(Path(d) / "out"))):
            try:
                read()
            except PosttrainError as e:
                assert "\n" not in e.one_line()


# ---------------------------------------------------------------- the convert manifest

entry_like = st.fixed_dictionaries({}, optional={
    "path": st.sampled_from(["m-Q8_0.gguf", "../m-Q8_0.gguf", "../../outside-Q8_0.gguf", "/etc/passwd", "", "sub/x"])
    | json_values,
    "file": json_values, "sha256": json_values, "quant": json_values, "size_bytes": json_values,
})
manifest_like = st.fixed_dictionaries({}, optional={
    "model_name": json_values, "checkpoint": json_values,
    "variants": st.dictionaries(st.sampled_from(["Q8_0", "F16"]), entry_like | json_values, max_size=2)
    | st.lists(entry_like | json_values, max_size=2) | json_values,
})


@FAST
@given(manifest=json_or_bytes(manifest_like | json_values))
def test_register_reads_any_manifest_or_refuses_it_and_never_leaves_the_folder(manifest):
    from posttrain.serve._variants import discover_variants

    with tempfile.TemporaryDirectory() as d:
        gguf_dir = Path(d) / "a" / "gguf"
        gguf_dir.mkdir(parents=True)
        (gguf_dir / "m-Q8_0.gguf").write_bytes(b"GGUF")
        (Path(d) / "a" / "m-Q8_0.gguf").write_bytes(b"GGUF")
        (Path(d) / "outside-Q8_0.gguf").write_bytes(b"GGUF")
        (gguf_dir / "manifest.json").write_bytes(manifest)
        try:
            variants = discover_variants(gguf_dir)
        except PosttrainError:
            return
        for v in variants:
            assert v.path.resolve().parent == gguf_dir.resolve()


@FAST
@given(manifest=json_or_bytes(manifest_like | json_values))
def test_convert_reads_any_manifest_without_crashing_and_reuses_nothing_outside(manifest):
    from posttrain.convert._convert import _VARIANT_FIELDS, _reusable
    from posttrain.convert._manifest import load_manifest, manifest_entries

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "a" / "gguf"
        out.mkdir(parents=True)
        (out / "manifest.json").write_bytes(manifest)
        (Path(d) / "outside-Q8_0.gguf").write_bytes(b"GGUF")
        doc = load_manifest(out)
        assert isinstance(doc, dict)
        for entry in manifest_entries(doc, _VARIANT_FIELDS).values():
            toolchain = {"llama_cpp_python": "x"}
            _reusable(entry, out, "sha", toolchain, {}, {**doc, "checkpoint_sha256": "sha", "options": {},
                                                         "toolchain": toolchain})


def test_convert_does_not_reuse_a_manifest_entry_outside_its_folder(tmp_path):
    from posttrain._files import sha256_file
    from posttrain.convert._convert import _reusable

    out = tmp_path / "gguf"
    out.mkdir()
    outside = tmp_path / "x-F16.gguf"
    outside.write_bytes(b"GGUF" * 10)
    entry = {"path": "../x-F16.gguf", "size_bytes": 40, "sha256": sha256_file(outside)}
    toolchain = {"llama_cpp_python": "x"}
    manifest = {"checkpoint_sha256": "s", "options": {}, "toolchain": toolchain}
    assert not _reusable(entry, out, "s", toolchain, {}, manifest)
    (out / "x-F16.gguf").write_bytes(outside.read_bytes())
    assert _reusable({**entry, "path": "x-F16.gguf"}, out, "s", toolchain, {}, manifest)


# ---------------------------------------------------------------- local benchmark files (--data-dir)


@FAST
@given(lines=st.lists(json_or_bytes(st.fixed_dictionaries({"question": json_values, "answer": json_values})
                                    | json_values), min_size=1, max_size=4))
def test_any_jsonl_benchmark_file_is_read_or_is_one_posttrain_error(lines):
    from posttrain.evaluate._tasks import read_rows

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "test.jsonl"
        path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
        try:
            rows = read_rows(path, ["question", "answer"])
        except PosttrainError as e:
            assert str(path) in e.one_line() and "\n" not in e.one_line()
            return
        assert all(isinstance(r, dict) and {"question", "answer"} <= r.keys() for r in rows)


# ---------------------------------------------------------------- report, chat template, store


@FAST
@given(doc=json_or_bytes(json_values | st.fixed_dictionaries(
    {"comparisons": json_values}, optional={"schema": st.sampled_from(["posttrain.compare/1", "posttrain.compare/2"])})))
def test_report_reads_any_compare_json_or_is_one_posttrain_error(doc):
    from posttrain.compare import read_compare, verdict_sentences

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "compare.json"
        path.write_bytes(doc)
        assert isinstance(verdict_sentences(path), list)  # listings never fail on one damaged run
        try:
            got = read_compare(path)
        except PosttrainError:
            return
        assert got["schema"] == "posttrain.compare/1"  # another version is refused, never guessed at


@FAST
@given(doc=json_or_bytes(json_values | st.fixed_dictionaries({"chat_template": json_values})))
def test_any_tokenizer_config_gives_a_template_or_none(doc):
    from posttrain.serve._chat_templates import chat_template_from_checkpoint

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "tokenizer_config.json").write_bytes(doc)
        assert chat_template_from_checkpoint(Path(d)) is None or isinstance(
            chat_template_from_checkpoint(Path(d)), str)


@settings(max_examples=25, deadline=None)
@given(data=st.binary(min_size=1, max_size=300) | st.binary(max_size=200).map(lambda b: b"SQLite format 3\0" + b))
def test_any_file_as_the_store_opens_or_is_one_posttrain_error(data):
    from posttrain.store import Store

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "posttrain.db"
        path.write_bytes(data)
        try:
            Store(path).close()
        except PosttrainError as e:
            assert str(path) in e.one_line()


# ---------------------------------------------------------------- the Modelfile, read back as Ollama reads it


def ollama_parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, argument) pairs exactly as Ollama's parser (parser/parser.go, ParseFile) reads a
    Modelfile: a port of its state machine, rune by rune, used here as the reference reader."""
    valid = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
             "message", "requires"}

    def printable(r: str) -> bool:  # Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols, ' '
        return r.isprintable()

    def unquote(s: str) -> tuple[str, bool]:
        if s[:3] == '"""':
            return (s[3:-3], True) if len(s) >= 6 and s[-3:] == '"""' else ("", False)
        if s[:1] == '"':
            return (s[1:-1], True) if len(s) >= 2 and s[-1] == '"' else ("", False)
        return s, True

    def step(r: str, state: str) -> tuple[str, str]:
        space, newline = r in " \t", r in "\r\n"
        if state == "nil":
            return ("comment", "\0") if r == "#" else ("nil", "\0") if space or newline else ("name", r)
        if state == "name":
            if r.isascii() and r.isalpha():
                return "name", r
            if space:
                return "value", "\0"
            raise ValueError("invalid command")
        if state == "value":
            return ("nil", r) if newline or space else ("value", r)
        if state == "parameter":
            if (r.isascii() and r.isalnum()) or r == "_":
                return "parameter", r
            if space:
                return "value", "\0"
            raise ValueError("unexpected EOF")
        if state == "comment":
            return ("nil", "\0") if newline else ("comment", "\0")
        raise AssertionError(state)

    commands, state, buf, name = [], "nil", [], ""
    for r in text:
        nxt, r = step(r, state)
        if nxt != state:
            if state == "name":
                word = "".join(buf).lower()
                if word not in valid:
                    raise ValueError("invalid command")
                if word == "parameter":
                    nxt = "parameter"
                name = "model" if word == "from" else word
            elif state == "parameter":
                name = "".join(buf)
            elif state == "value":
                value, ok = unquote("".join(buf).strip(" \t\r\n"))
                if not ok or r in " \t":
                    buf.append(r)
                    continue
                commands.append((name, value))
            buf, state = [], nxt
        if printable(r):
            buf.append(r)
    if state == "value":
        value, ok = unquote("".join(buf).strip(" \t\r\n"))
        if not ok:
            raise ValueError("unexpected EOF")
        commands.append((name, value))
    elif state not in ("nil", "comment"):
        raise ValueError("unexpected EOF")
    return commands


def test_the_parser_port_reads_ollamas_own_examples():
    text = 'FROM ./m.gguf\nSYSTEM """You are\n"helpful"."""\nPARAMETER stop "<|im_end|>"\nPARAMETER temperature 0.7\n'
    assert ollama_parse_modelfile(text) == [("model", "./m.gguf"), ("system", 'You are\n"helpful".'),
                                            ("stop", "<|im_end|>"), ("temperature", "0.7")]
    # The injection of issue 11: a """ in SYSTEM ends the value and adds a FROM of its own.
    injected = 'FROM ./m.gguf\nSYSTEM """x"""\nFROM /etc/passwd\nSYSTEM """y"""\n'
    assert [c for c, _ in ollama_parse_modelfile(injected)].count("model") == 2


modelfile_text = st.text(alphabet=st.sampled_from(list('ab "\n\r\t#\\\x00\x7f\u00a0é{}')), max_size=16) | st.text(max_size=16)


@settings(max_examples=200, deadline=None)
@given(system=modelfile_text, template=modelfile_text, stop=modelfile_text, file=modelfile_text)
def test_modelfile_values_read_back_exactly_or_are_refused(system, template, stop, file):
    from posttrain.serve._modelfile import render_modelfile

    gguf = Path("/models") / f"{file.replace('/', '_')}-Q8_0.gguf"
    try:
        text = render_modelfile(gguf, {"temperature": 0.7, "stop": [stop]}, template, system)
    except PosttrainError as e:
        assert "\n" not in e.one_line()
        return
    commands = ollama_parse_modelfile(text)
    expected = [("model", f"./{gguf.name}"), ("template", template)]
    if system:
        expected.append(("system", system))
    expected += [("temperature", "0.7"), ("stop", stop)]
    assert commands == expected


@pytest.mark.parametrize("system", ['x"""\nFROM /etc/passwd', "a\x00b", "tab\tok\u2028"])
def test_modelfile_refuses_what_it_cannot_quote(system):
    from posttrain.serve._modelfile import render_modelfile

    with pytest.raises(PosttrainError, match="system prompt"):
        render_modelfile(Path("m.gguf"), {}, None, system)
