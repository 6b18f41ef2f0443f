"""llama.cpp's self-test for `posttrain doctor`: load and decode a tiny quantized GGUF in a child process.

A CPU feature llama.cpp mishandles (AMX on some Intel CPUs) or a broken GPU build kills the process
that decodes, with a signal and no Python exception. So the test runs in children and the parent
reads how they ended:

- "safe load": posttrain's load without llama.cpp's extra CPU buffer types (GPU layers as
  configured), then 32 greedy tokens;
- "llama.cpp defaults": the same with llama.cpp's extra buffer types on, as a plain `llama_cpp.Llama`
  would load it. When this one crashes and the first does not, this machine needs posttrain's fix;
  the machine profile (`_profile`) asks this question and keeps them on only where it ends well.

The tiny GGUF (a random Llama, Q8_0) is made once per llama-cpp-python version, also in a child
(`posttrain.convert._selftest_model`: making it takes the converter, a floor above this one), and
kept in posttrain's cache.

    python -m posttrain.llamacpp._selftest decode FILE.gguf [--n-gpu-layers N] PARENT_PID  (one JSON line)

Each child is started, bounded in time and ended with its parent by `posttrain._child_process`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from posttrain._child_process import child_args, describe_exit, print_answer, run_module
from posttrain.llamacpp import _settings

DECODE_TOKENS = 32
TIMEOUT_S = 300.0
SELFTEST_QUANT = "q8_0"  # quantized weights are what the AMX buffer type takes; F16 is not affected


@dataclass
class Outcome:
    """How one self-test child ended: ok, crashed (with `how`), failed (an error) or timed out."""

    name: str
    status: str
    detail: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


MAKER = "posttrain.convert._selftest_model"  # named, not imported: it runs in its own child


def _child(args: list[str], env: dict[str, str] | None = None, timeout: float = TIMEOUT_S,
           module: str = "posttrain.llamacpp._selftest") -> tuple[int | None, str]:
    """Run `python -m MODULE ARGS` (this module by default); (exit code or None on timeout, its output)."""
    with tempfile.TemporaryDirectory(prefix="posttrain-selftest-") as tmp:
        ended = run_module(module, args, log=Path(tmp) / "output.log", env=env, timeout_s=timeout)
        return ended.returncode, ended.log.read_text(encoding="utf-8", errors="replace")


def _outcome(name: str, code: int | None, output: str, seconds: float) -> Outcome:
    if code is None:
        return Outcome(name, "timeout", f"no answer in {TIMEOUT_S:g} s", seconds)
    how = describe_exit(code)
    if how is not None:
        return Outcome(name, "crashed", how, seconds)
    last = (output.strip().splitlines() or [""])[-1]
    try:
        doc = json.loads(last)
    except ValueError:
        return Outcome(name, "failed", f"exit code {code}: {last[:200] or 'no output'}", seconds)
    if code != 0 or not doc.get("ok"):
        return Outcome(name, "failed", str(doc.get("error") or f"exit code {code}"), seconds)
    return Outcome(name, "ok", f"a {doc['prompt']}-token prompt and {doc['tokens']} generated tokens decoded in "
                               f"{doc['decode_s']:.2f} s", seconds)


def models_dir() -> Path:
    """Where the models of the self-test and of the machine profile's probe are kept: one folder per
    llama-cpp-python version (a GGUF the converter of another version wrote may not load)."""
    from posttrain import paths, toolchain

    return paths.cache_dir() / "selftest" / (toolchain.llama_cpp_python_version() or "unknown")


def selftest_gguf() -> Path:
    """The tiny quantized GGUF the self-test decodes, made (in a child) on first use."""
    path = models_dir() / f"selftest-{SELFTEST_QUANT.upper()}.gguf"
    if not path.is_file():
        code, output = _child([str(path), SELFTEST_QUANT], module=MAKER)
        if code != 0 or not path.is_file():
            how = describe_exit(code) if code is not None else "timed out"
            tail = " ".join(output.strip().splitlines()[-3:])
            raise RuntimeError(f"could not make the self-test model ({how or f'exit code {code}'}): {tail}")
    return path


def _decode_in_child(name: str, extra_bufts: bool, n_gpu_layers: int | None) -> Outcome:
    gguf = selftest_gguf()
    layers = [] if n_gpu_layers is None else ["--n-gpu-layers", str(n_gpu_layers)]
    # The profile is not read in the child: this child is what decides it.
    env = {_settings.EXTRA_BUFTS_ENV: "1" if extra_bufts else "0", _settings.PROFILE_ENV: "0"}
    started = time.monotonic()
    code, output = _child(["decode", str(gguf), *layers], env=env)
    return _outcome(name, code, output, time.monotonic() - started)


def run_selftest(n_gpu_layers: int | None = None) -> tuple[Outcome, Outcome]:
    """Decode the tiny model with the safe load (no extra CPU buffer types), then with llama.cpp's
    defaults (the control: extra buffer types on)."""
    return (_decode_in_child("safe load", False, n_gpu_layers),
            _decode_in_child("llama.cpp defaults", True, n_gpu_layers))


def decode_with_extra_bufts() -> Outcome:
    """The control alone (the machine profile's first question), on the CPU."""
    return _decode_in_child("llama.cpp defaults", True, 0)


# -- the child side --------------------------------------------------------------------------------
def _decode(gguf: Path, n_gpu_layers: int | None) -> dict:
    from posttrain.llamacpp._engine import LlamaCppEngine

    engine = LlamaCppEngine(gguf, n_ctx=256, n_gpu_layers=n_gpu_layers)
    try:
        prompt = engine.tokenize("The quick brown fox jumps over the lazy dog.", add_special=True)
        started = time.perf_counter()
        tokens = engine.generate_greedy(prompt, max_tokens=DECODE_TOKENS)
        return {"ok": True, "prompt": len(prompt), "tokens": len(tokens), "decode_s": time.perf_counter() - started,
                "extra_bufts": bool(getattr(engine.model_params, "use_extra_bufts", False))}
    finally:
        engine.close()


def main(argv: list[str]) -> int:
    import argparse

    args = child_args(argv)
    if args is None:  # `posttrain doctor` is gone already
        return 1
    parser = argparse.ArgumentParser(prog="posttrain.llamacpp._selftest")
    parser.add_argument("action", choices=("decode",))
    parser.add_argument("path", type=Path)
    parser.add_argument("--n-gpu-layers", type=int, default=None)
    ns = parser.parse_args(args)
    return print_answer(lambda: _decode(ns.path, ns.n_gpu_layers))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
