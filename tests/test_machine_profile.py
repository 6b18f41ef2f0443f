"""The machine profile: llama.cpp's fastest safe settings, measured once per CPU and build, used by
every load, shown by `doctor`, overridden by the environment, and never a failed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from posttrain import llamacpp
from posttrain.llamacpp import _settings
from posttrain.llamacpp._profile import choose, ensure_profile, forget_machine_profile
from posttrain.llamacpp._profile_store import MachineProfile, Probe, profile_path

ENV = (_settings.EXTRA_BUFTS_ENV, _settings.THREADS_ENV, _settings.UBATCH_ENV, _settings.REFERENCE_ENV,
       _settings.PROFILE_ENV)


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    """One cache for this module's measured profile (half a minute to make), and no override set."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    root = tmp_path_factory.getbasetemp() / "profile-cache"
    monkeypatch.setenv("POSTTRAIN_CACHE", str(root))
    _settings.forget_profile()
    yield root
    _settings.forget_profile()


def test_measured_once_then_read_from_the_cache_and_used_by_every_load(cache, tiny_gguf):
    said: list[str] = []
    profile = ensure_profile(say=said.append)
    assert profile is not None and not profile.fallback, profile
    if said:  # measured now (not by an earlier test of this module): it said so first
        assert "measuring llama.cpp on this CPU" in said[0]
    # Every configuration was timed on both reference types, and the choice is one of them.
    assert {p.reference for p in profile.probes} == {"F16", "BF16"}
    assert all(p.tokens_per_s > 0 for p in profile.probes)
    assert profile.conditions is not None and profile.conditions.wall_s > 0
    chosen = {"reference": profile.reference, "threads": profile.threads, "n_ubatch": profile.n_ubatch}
    safe = {"reference": "F16", "threads": _settings.cpu_threads(), "n_ubatch": 256}
    # Measured on a quiet machine: the choice is one of the probes; on a busy one, the safe settings.
    assert chosen == (safe if profile.conditions.busy else choose(profile.probes, safe))
    assert profile.extra_bufts_detail.startswith(("ok", "crashed", "failed", "timeout"))

    # Asked again: the cached record, nothing measured.
    said.clear()
    started = time.monotonic()
    again = ensure_profile(say=said.append)
    assert again == profile and not said and time.monotonic() - started < 5

    # The engine and every plain llama_cpp load take its settings.
    engine = llamacpp.LlamaCppEngine(tiny_gguf["Q8_0"], n_ctx=256)
    try:
        assert engine.n_threads == profile.threads and engine._n_ubatch == profile.n_ubatch
        assert bool(engine.model_params.use_extra_bufts) == profile.extra_bufts
    finally:
        engine.close()
    assert bool(llamacpp.load_llama_cpp().llama_model_default_params().use_extra_bufts) == profile.extra_bufts


def test_each_choice_is_overridden_by_its_environment_variable(cache, tiny_gguf, monkeypatch):
    ensure_profile()
    monkeypatch.setenv(_settings.THREADS_ENV, "1")
    monkeypatch.setenv(_settings.UBATCH_ENV, "128")
    monkeypatch.setenv(_settings.EXTRA_BUFTS_ENV, "0")
    monkeypatch.setenv(_settings.REFERENCE_ENV, "bf16")
    engine = llamacpp.LlamaCppEngine(tiny_gguf["Q8_0"], n_ctx=256)
    try:
        assert (engine.n_threads, engine._n_ubatch, bool(engine.model_params.use_extra_bufts)) == (1, 128, False)
    finally:
        engine.close()
    assert _settings.reference_type() == "BF16"
    # Turned off altogether: the safe settings, nothing read or measured.
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(_settings.PROFILE_ENV, "0")
    assert ensure_profile() is None and _settings.current_profile() is None
    assert (_settings.best_threads(), _settings.n_ubatch(), _settings.extra_bufts_allowed(), _settings.reference_type()) \
        == (_settings.cpu_threads(), 256, False, "F16")


def test_a_profile_of_another_cpu_or_build_or_a_damaged_one_is_not_used(cache):
    profile = ensure_profile()
    path = profile_path(profile.key)
    saved = path.read_text(encoding="utf-8")
    try:
        other = {**json.loads(saved), "key": "0" * 20, "threads": 99}  # another machine's, under this name
        path.write_text(json.dumps(other), encoding="utf-8")
        _settings.forget_profile()
        assert _settings.current_profile() is None and _settings.best_threads() != 99
        path.write_text('{"schema": "posttrain.machine-profile/1", "key"', encoding="utf-8")  # torn
        _settings.forget_profile()
        assert _settings.current_profile() is None
    finally:
        path.write_text(saved, encoding="utf-8")
        _settings.forget_profile()
    assert _settings.current_profile() == profile


def test_a_probe_that_fails_gives_the_safe_settings_and_says_why(tmp_path, monkeypatch):
    """A failure while measuring is the fallback path, never a failed run: here the probe model in
    the cache is a truncated file, which llama.cpp refuses to load in the probe child."""
    from posttrain._versions import package_version

    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "selftest" / package_version("llama-cpp-python")
    folder.mkdir(parents=True)
    for reference in ("F16", "BF16"):
        (folder / f"probe-{reference}.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 40)
    _settings.forget_profile()
    try:
        profile = ensure_profile()
        assert profile.fallback.startswith("the timing probe ended badly"), profile.fallback
        assert (profile.threads, profile.n_ubatch, profile.reference, profile.probes) \
            == (_settings.cpu_threads(), 256, "F16", ())
        assert _settings.n_ubatch() == 256 and _settings.reference_type() == "F16"
        # `doctor --reprofile` (forget, measure): again the fallback, again no failure.
        forget_machine_profile()
        assert not profile_path(profile.key).exists()
    finally:
        _settings.forget_profile()


def test_a_setting_other_than_the_safe_one_must_win_by_more_than_the_noise():
    safe = {"threads": 2, "n_ubatch": 256, "reference": "F16"}

    def probes(**rates):  # "F16_256": tok/s
        return tuple(Probe(key.split("_")[0], 2, int(key.split("_")[1]), v) for key, v in rates.items())

    # BF16 3 % faster: within the noise, F16 stays.
    assert choose(probes(F16_256=1000, BF16_256=1030), safe)["reference"] == "F16"
    # BF16 1.5x faster: BF16; 512 only 2 % faster than 256 with BF16: 256 stays.
    assert choose(probes(F16_256=1000, F16_512=1000, BF16_256=1500, BF16_512=1530), safe) \
        == {"threads": 2, "n_ubatch": 256, "reference": "BF16"}
    assert choose(probes(F16_256=1000, F16_512=1200), safe)["n_ubatch"] == 512
    # The fastest departs twice, one within the noise departs once, the safe one is within it too: safe.
    assert choose(probes(F16_256=1746, F16_512=1280, BF16_256=1715, BF16_512=1787), safe) == safe


def test_doctor_shows_the_profile_and_what_overrides_it(cache):
    ensure_profile()
    env = {**os.environ, "COLUMNS": "200", _settings.UBATCH_ENV: "128"}
    proc = subprocess.run([sys.executable, "-m", "posttrain", "doctor", "--out", str(cache)], capture_output=True,
                          text=True, env=env, timeout=600)
    out = proc.stdout
    assert "machine profile" in out and "extra CPU buffer types" in out, out
    assert "threads, micro-batch" in out and ", 128 " in out  # the override is what loads use
    assert f"{_settings.UBATCH_ENV}=128" in out
    assert "BF16 prefills" in out and "as fast as F16 on the probe" in out


def test_the_profile_record_reads_back_equal():
    from posttrain._run_conditions import RunConditions

    profile = MachineProfile(key="k", cpu="cpu", build="b", extra_bufts=True, extra_bufts_detail="ok", threads=2,
                             n_ubatch=512, reference="BF16", probes=(Probe("BF16", 2, 512, 1.5),),
                             conditions=RunConditions(1.0, 2, 90.0, 3.0, 0.0, 0.5, False))
    assert MachineProfile.from_json(json.loads(json.dumps(profile.to_json()))) == profile
    assert MachineProfile.from_json({"schema": "posttrain.machine-profile/0"}) is None


@pytest.mark.parametrize("safe_here", [False, True])
def test_every_load_follows_the_profiles_answer_on_extra_buffer_types(safe_here, tiny_gguf, tmp_path, monkeypatch):
    """What llama.cpp itself reports in a fresh posttrain process: Q4_K weights repacked into a
    CPU_REPACK buffer where the profile found the extra buffer types safe, none where it did not."""
    info = llamacpp.system_info()
    if safe_here and ("AVX2 = 1" not in info or "REPACK = 1" not in info):
        pytest.skip(f"this llama.cpp build repacks no Q4_K weights: {info}")
    from posttrain.llamacpp._profile_store import write_profile

    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    key = _settings.current_key()
    write_profile(MachineProfile(key=key, cpu="this CPU", build="this build", extra_bufts=safe_here,
                                 extra_bufts_detail="ok" if safe_here else "crashed: SIGILL in native code",
                                 threads=1, n_ubatch=256, reference="F16"))
    code = f"""
        import posttrain, llama_cpp
        from posttrain.llamacpp import LlamaCppEngine
        llm = llama_cpp.Llama(model_path={str(tiny_gguf["Q4_K_M"])!r}, n_ctx=64, verbose=True)
        engine = LlamaCppEngine({str(tiny_gguf["Q4_K_M"])!r}, n_ctx=128, verbose=True)
        print("plain", llm.model_params.use_extra_bufts, "engine", engine.model_params.use_extra_bufts,
              "threads", engine.n_threads)
    """
    import textwrap

    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"plain {safe_here} engine {safe_here} threads 1" in proc.stdout
    repacked = [ln for ln in proc.stderr.splitlines() if "CPU_REPACK model buffer" in ln]
    assert len(repacked) == (2 if safe_here else 0), repacked
    _settings.forget_profile()
