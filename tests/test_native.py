"""llama.cpp loaded safely on every machine: before numpy and torch, and without the extra CPU buffer
types that crash on AMX CPUs (issue 10) unless this machine's profile found them safe (issue 32:
`tests/test_machine_profile.py`). The tests look at what llama.cpp itself reports: with its extra
buffer types on, it repacks Q4_K weights into a "CPU_REPACK" buffer on any AVX2 CPU; with no profile
(`POSTTRAIN_MACHINE_PROFILE=0`: the safe load, what a CPU whose self-test crashed gets) every
posttrain load path must show no such buffer (nor an "AMX" one). The control that loads with
llama.cpp's defaults asks the self-test first: on a CPU where those defaults crash (AMX in a virtual
machine), it checks that the crash is contained instead (issue 29)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from posttrain import llamacpp

EXTRA_BUFFER_MARKS = ("CPU_REPACK model buffer", "AMX model buffer")
# The safe load: no machine profile read (a profile whose self-test passed turns the buffer types on).
SAFE = {"POSTTRAIN_MACHINE_PROFILE": "0"}


@pytest.fixture(autouse=True)
def safe_load(monkeypatch):
    for name, value in SAFE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(llamacpp.EXTRA_BUFTS_ENV, raising=False)


def _python(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **SAFE, **(env or {})})


def _extra_buffers(log: str) -> list[str]:
    return [line.strip() for line in log.splitlines() if any(mark in line for mark in EXTRA_BUFFER_MARKS)]


@pytest.fixture(scope="module")
def repacking_machine() -> None:
    info = llamacpp.system_info()
    if "AVX2 = 1" not in info or "REPACK = 1" not in info:
        pytest.skip(f"this llama.cpp build repacks no Q4_K weights, so the buffer types cannot be told apart: {info}")


PLAIN_LLAMA = """
    import posttrain  # what every posttrain process does first
    import llama_cpp
    llm = llama_cpp.Llama(model_path={path!r}, n_ctx=64, verbose=True)
    llm.eval(llm.tokenize(b"The quick brown fox jumps over the lazy dog"))
    print("use_extra_bufts", llm.model_params.use_extra_bufts)
"""


@pytest.fixture(scope="module")
def selftest():
    """(posttrain's load, llama.cpp's defaults) as the self-test of `posttrain doctor` finds them here, each
    decoded in a child: whether a control that loads with llama.cpp's defaults can survive on this CPU."""
    from posttrain.llamacpp import run_selftest

    return run_selftest()


def test_llama_cpp_defaults_would_use_extra_buffers_here(tiny_gguf, repacking_machine, selftest):
    # The control: proves the check below can see extra buffer types when they are in use.
    ours, defaults = selftest
    proc = _python(PLAIN_LLAMA.format(path=str(tiny_gguf["Q4_K_M"])), env={llamacpp.EXTRA_BUFTS_ENV: "1"})
    if defaults.status == "crashed":
        # A CPU where llama.cpp's defaults die at the first decode (AMX in a VM: SIGILL one day, a GPF
        # another): no load with them can run here. What must hold instead is what protects a user: the
        # crash stays in the child (it died of a signal, not the parent), it is named as doctor names it,
        # and posttrain's own load in the same kind of child decodes.
        how = llamacpp.describe_exit(proc.returncode)
        assert how is not None, f"the self-test saw {defaults.detail}, this load ended with {proc.returncode}"
        assert ours.ok, ours
        print(f"llama.cpp's defaults crash here ({how}, self-test: {defaults.detail}); contained in the child")
        return
    assert defaults.ok, defaults
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _extra_buffers(proc.stderr), "llama.cpp's defaults should repack Q4_K weights on this CPU"


def test_any_llama_in_a_posttrain_process_loads_without_extra_buffer_types(tiny_gguf, repacking_machine):
    # Covers every llama_cpp.Llama: the conversion check, the server, and a user's own in the same process.
    proc = _python(PLAIN_LLAMA.format(path=str(tiny_gguf["Q4_K_M"])))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "use_extra_bufts False" in proc.stdout
    assert _extra_buffers(proc.stderr) == []


def test_the_evaluation_engine_loads_without_extra_buffer_types(tiny_gguf, repacking_machine):
    proc = _python(f"""
        from posttrain.llamacpp import LlamaCppEngine, ScoreRequest
        engine = LlamaCppEngine({str(tiny_gguf["Q4_K_M"])!r}, n_ctx=128, verbose=True)
        ctx = engine.tokenize("The quick brown fox", add_special=True)
        print(engine.score_batched([ScoreRequest(tuple(ctx), tuple(engine.tokenize(" jumps", add_special=False)))]))
        print("use_extra_bufts", engine.model_params.use_extra_bufts)
        engine.close()
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "use_extra_bufts False" in proc.stdout
    assert _extra_buffers(proc.stderr) == []


def test_the_server_loads_without_extra_buffer_types(tiny_gguf, tmp_path, repacking_machine):
    import httpx

    from posttrain.serve import LlamaServer

    log = tmp_path / "server.log"
    with LlamaServer(tiny_gguf["Q4_K_M"], n_ctx=256, log_path=log) as server:
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=60)
        assert r.status_code == 200
    text = log.read_text(errors="replace")
    assert "load_tensors" in text  # the server logs its load, so the absence below means something
    assert _extra_buffers(text) == []


def test_the_conversion_check_loads_without_extra_buffer_types(tiny_gguf):
    from posttrain.convert import _verify

    llm = _verify._load(tiny_gguf["Q4_K_M"], 64)
    try:
        assert llm.model_params.use_extra_bufts is False
    finally:
        llm.close()


def test_the_user_can_turn_extra_buffer_types_on_and_off(monkeypatch):
    monkeypatch.setenv(llamacpp.EXTRA_BUFTS_ENV, "1")
    assert llamacpp.model_params().use_extra_bufts is True
    monkeypatch.setenv(llamacpp.EXTRA_BUFTS_ENV, "0")
    assert llamacpp.model_params().use_extra_bufts is False
    monkeypatch.delenv(llamacpp.EXTRA_BUFTS_ENV)
    assert llamacpp.model_params().use_extra_bufts is False  # the safe load: no profile


def test_gpu_layers_default_to_all_on_a_build_that_offloads_and_none_on_cpu():
    expected = llamacpp.ALL_LAYERS if llamacpp.gpu_offload_supported() else 0
    assert llamacpp.resolve_gpu_layers(None) == expected
    assert llamacpp.resolve_gpu_layers(-1) == llamacpp.ALL_LAYERS
    assert llamacpp.resolve_gpu_layers(3) == 3
    assert llamacpp.llama_kwargs(-1) == {"n_gpu_layers": -1}


# Every way a posttrain process starts: the CLI, the step child, the server child, the self-test,
# the Trainer callback's helper, and the library imported by a user's script.
ENTRY_MODULES = ["posttrain.cli", "posttrain.pipeline._step_child", "posttrain.serve._child",
                 "posttrain.llamacpp._selftest", "posttrain.integrations._handoff", "posttrain.evaluate",
                 "posttrain.convert", "posttrain.llamacpp"]


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_llama_cpp_is_loaded_before_numpy_and_torch(module):
    # A CUDA build of llama.cpp segfaults at model load when numpy or torch came first (facts.md).
    # The audit hook sees the order in which the process really loads them.
    proc = _python(f"""
        import json, sys
        events = []
        def hook(event, args):
            if event == "ctypes.dlopen" and "llama" in str(args[0]):
                events.append("libllama")
            elif event == "import" and args[0] in ("numpy", "torch"):
                events.append(args[0])
        sys.addaudithook(hook)
        import importlib
        importlib.import_module({module!r})
        import numpy, torch  # whatever comes later comes after llama.cpp
        print(json.dumps(events))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "libllama" in events, events
    first = events.index("libllama")
    assert "numpy" not in events[:first] and "torch" not in events[:first], events


def test_the_self_test_decodes_in_a_child_and_says_how_llama_cpp_defaults_fare(tmp_path, monkeypatch):
    from posttrain.llamacpp import run_selftest

    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    ours, control = run_selftest()
    assert ours.ok, ours
    assert "generated tokens decoded" in ours.detail
    assert control.status in ("ok", "crashed", "failed")
    assert Path(tmp_path / "cache" / "selftest").is_dir()


def test_doctor_reports_a_crashing_child_with_its_signal():
    # describe_exit is how every supervisor here (steps, self-test) names a native crash.
    from posttrain.llamacpp import describe_exit

    assert describe_exit(-11) == "SIGSEGV in native code"
    assert describe_exit(-4) == "SIGILL in native code"
    assert describe_exit(0xC0000005) == "access violation in native code"  # Windows
    assert describe_exit(1) is None
