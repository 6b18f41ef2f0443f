"""Settings: posttrain.toml < POSTTRAIN_* < flags, clear errors, `posttrain init`, deterministic run ids."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from posttrain.errors import PosttrainError
from posttrain.pipeline import Config, config_template, load_config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import os

    for k in list(os.environ):
        if k.startswith("POSTTRAIN_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)


def test_defaults_match_the_documented_ones():
    c = load_config()
    assert c.quants == ["f16", "q8_0", "q4_k_m"] and c.tasks == ["mmlu", "gsm8k", "hellaswag"]
    assert c.ollama.url == "http://127.0.0.1:11434"
    assert (c.ollama.temperature, c.ollama.top_p, c.ollama.num_ctx) == (0.7, 0.9, 4096)
    assert c.watch.check_interval_s == 300 and c.watch.pattern == "**/final_model" and c.retries == 3


def test_the_init_template_parses_to_exactly_the_defaults(tmp_path):
    (tmp_path / "posttrain.toml").write_text(config_template())
    assert tomllib.loads(config_template())  # valid TOML
    assert load_config() == load_config(discover=False)


def test_flags_beat_environment_beat_file(tmp_path, monkeypatch):
    path = tmp_path / "my.toml"
    path.write_text('quants = ["f16", "q8_0"]\ntasks = ["gsm8k"]\nlimit = 50\n[ollama]\nnum_ctx = 2048\n'
                    '[notify]\nurls = ["json://localhost"]\n')
    c = load_config(path)
    assert (c.quants, c.tasks, c.limit, c.ollama.num_ctx) == (["f16", "q8_0"], ["gsm8k"], 50, 2048)
    monkeypatch.setenv("POSTTRAIN_LIMIT", "20")
    monkeypatch.setenv("POSTTRAIN_QUANTS", "F16, Q4_K_M")
    monkeypatch.setenv("POSTTRAIN_OLLAMA__URL", "http://127.0.0.1:9999/")
    monkeypatch.setenv("POSTTRAIN_NOTIFY__URLS", "ntfy://a,json://b")
    c = load_config(path)
    assert (c.limit, c.quants, c.ollama.url, c.ollama.num_ctx) == (20, ["f16", "q4_k_m"], "http://127.0.0.1:9999", 2048)
    assert c.notify.urls == ["ntfy://a", "json://b"]
    c = load_config(path, limit=5, quants="q8_0", ollama={"num_ctx": 1024})
    assert (c.limit, c.quants, c.ollama.num_ctx, c.ollama.url) == (5, ["q8_0"], 1024, "http://127.0.0.1:9999")


def test_home_follows_posttrain_home(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path / "h"))
    c = load_config()
    assert c.base_dir == tmp_path / "h" and c.store_path == tmp_path / "h" / "posttrain.db"
    assert c.run_dir("r1") == tmp_path / "h" / "runs" / "r1" and c.gguf_dir("m") == tmp_path / "h" / "gguf" / "m"


@pytest.mark.parametrize(("toml", "message"), [
    ('quants = ["q4 k m"]', "quants: 'q4 k m' is not a GGUF type name"),
    ("limit = 0", "limit: Input should be greater than or equal to 1"),
    ('[watch]\npatern = "x"', "watch.patern: unknown setting"),
    ("retries = 'three'", "retries: Input should be a valid integer"),
    ('[ollama]\nurl = "localhost:11434"', "ollama.url: must be an http(s) URL"),
    ("quants = [", "is not valid TOML"),
    ('track = ["mlfow"]', "track: 'mlfow' is not a tracker (one of: mlflow, wandb)"),
    ('track_artifacts = ["ggml"]', "track_artifacts: 'ggml' is not an artifact kind (one of: gguf)"),
])
def test_invalid_settings_say_where_and_what(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml + "\n")
    with pytest.raises(PosttrainError) as e:
        load_config(path)
    assert message in e.value.one_line()
    assert "bad.toml" in e.value.one_line()


def test_a_bad_environment_variable_is_reported_too(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_WATCH__CHECK_INTERVAL_S", "-5")
    with pytest.raises(PosttrainError, match="watch.check_interval_s: Input should be greater than 0"):
        load_config()


def test_the_run_fingerprint_ignores_where_and_how_but_not_what():
    base = load_config(discover=False)
    assert base.fingerprint_sha256() == load_config(discover=False, home=Path("/elsewhere"), retries=5,
                                                    watch={"check_interval_s": 10}).fingerprint_sha256()
    for change in ({"limit": 10}, {"quants": "f16"}, {"baseline": "ollama:x"}, {"seed": 1}):
        assert load_config(discover=False, **change).fingerprint_sha256() != base.fingerprint_sha256()


def test_the_ladders_measurement_settings_change_the_fingerprint_only_when_the_ladder_runs():
    ship = load_config(discover=False, ship=True)
    for change in ({"ship_n_ctx": 256}, {"ship_max_tokens": 4096}, {"ship_speed_reps": 5}, {"ship_speed": False},
                   {"ship_alpha": 0.1}):
        assert load_config(discover=False, ship=True, **change).fingerprint_sha256() != ship.fingerprint_sha256()
        assert (load_config(discover=False, **change).fingerprint_sha256()
                == load_config(discover=False).fingerprint_sha256())
    # The defaults are not written out: a ladder run before these settings existed keeps its fingerprint.
    assert ship.fingerprint()["ship"] == {"text": None, "margin": 1.0, "max_kld": 0.1}


def test_a_config_pickles_for_parallel_jobs():
    import pickle

    c = load_config(discover=False, limit=3)
    assert isinstance(c, Config) and pickle.loads(pickle.dumps(c)) == c


def test_posttrain_init_writes_the_file_and_refuses_to_overwrite(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "posttrain", "init", *a], capture_output=True, text=True)
    first = run(str(tmp_path / "posttrain.toml"))
    assert first.returncode == 0 and (tmp_path / "posttrain.toml").read_text() == config_template()
    second = run(str(tmp_path / "posttrain.toml"))
    assert second.returncode == 1 and "already exists" in second.stderr and "--force" in second.stderr
    assert run(str(tmp_path / "posttrain.toml"), "--force").returncode == 0


def test_task_paths_must_be_directories_and_accept_commas(tmp_path, monkeypatch):
    (tmp_path / "t1").mkdir()
    (tmp_path / "t2").mkdir()
    monkeypatch.setenv("POSTTRAIN_TASK_PATHS", f"{tmp_path / 't1'},{tmp_path / 't2'}")
    assert load_config().task_paths == [tmp_path / "t1", tmp_path / "t2"]
    with pytest.raises(PosttrainError, match="task_paths: .*nope is not a directory"):
        load_config(task_paths=str(tmp_path / "nope"))


def test_a_mistyped_posttrain_variable_is_an_error_that_names_the_right_one(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_QUANT", "f16")  # the setting is POSTTRAIN_QUANTS
    with pytest.raises(PosttrainError) as e:
        load_config(discover=False)
    assert e.value.one_line() == ("unknown environment variable POSTTRAIN_QUANT — did you mean POSTTRAIN_QUANTS? "
                                  "(or unset it)")


def test_every_posttrain_variable_the_code_reads_is_known(monkeypatch):
    """A variable the code reads must not be refused as a typo by `run` and `watch` (it was, for
    POSTTRAIN_LLAMA_THREADS and POSTTRAIN_NODE_CACHE): every name spelled in the sources and scripts."""
    import re

    from posttrain.pipeline._config import check_variables

    root = Path(__file__).resolve().parents[1]
    spelled = {m for f in [*(root / "src" / "posttrain").rglob("*.py"), *(root / "scripts").iterdir()] if f.is_file()
               for m in re.findall(r"\bPOSTTRAIN_[A-Z0-9_]*[A-Z0-9]\b", f.read_text(encoding="utf-8", errors="replace"))}
    assert {"POSTTRAIN_LLAMA_THREADS", "POSTTRAIN_REFERENCE_TYPE", "POSTTRAIN_NODE_CACHE"} <= spelled
    for name in sorted(spelled):
        check_variables({name: "1"})
    # Nested settings, and the variables read outside the config (setup.sh, the toolchain, tests).
    for name in ("POSTTRAIN_OLLAMA__URL", "POSTTRAIN_WATCH__SETTLE_S", "POSTTRAIN_N_GPU_LAYERS", "POSTTRAIN_HOME",
                 "POSTTRAIN_LLAMA_EXTRA_BUFTS", "POSTTRAIN_TEST_CRASH", "POSTTRAIN_CUDA"):
        monkeypatch.setenv(name, "0" if "LAYERS" in name or "SETTLE" in name else "http://127.0.0.1:9"
                           if "URL" in name else "")
    check_variables()
