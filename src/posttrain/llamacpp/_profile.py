"""This machine's profile: llama.cpp's fastest safe settings, measured once per CPU and build.

Three questions, each answered in child processes (a crash there is an answer, never a failed run):
1. Do llama.cpp's extra CPU buffer types (AMX, weight repacking) decode safely here? The self-test's
   control child decodes a quantized model with them on; it ends well → on. It ends with a signal
   on CPUs whose AMX a virtual machine does not give (SIGILL, a GPF): → off, as before.
2. Which reference type prefills faster, F16 or BF16? CPUs with AVX512_BF16 multiply BF16 natively;
   others convert it. Timed on the probe model (SmolLM2's matrix shapes, `convert._selftest_model`).
3. Which thread count and micro-batch (n_ubatch) prefill a 512-token batch fastest: every usable
   CPU or only the physical cores (hyper-threads share one core's units); 256 or 512.

The answer is cached under a key of the CPU and the build (`_profile_store`); `_settings` hands it
to every load, and an environment variable overrides each choice. Measuring takes about half a
minute and says so on the terminal first.

    python -m posttrain.llamacpp._profile probe F16.gguf BF16.gguf THREADS,.. UBATCH,.. RESULT.json PARENT_PID
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from posttrain._child_process import child_args, describe_exit, last_line, run_module
from posttrain._run_conditions import CpuWatch, RunConditions
from posttrain.llamacpp import _settings
from posttrain.llamacpp._loading import load_llama_cpp, system_info
from posttrain.llamacpp._profile_store import (
    SAFE_REFERENCE,
    SAFE_UBATCH,
    MachineProfile,
    Probe,
    cpu_identity,
    cpu_name,
    profile_path,
    read_profile,
    write_profile,
)

PROBE_TOKENS = 512  # one evaluation batch
REPEATS = 3  # best of: the first decode of a context also warms caches
UBATCHES = (256, 512)
MARGIN = 0.05  # a setting other than the safe one must be this much faster to be chosen
PROBE_TIMEOUT_S = 300.0


def thread_candidates() -> list[int]:
    """Every CPU this process may use and, where fewer, the physical cores among them."""
    import psutil

    usable = _settings.cpu_threads()
    physical = psutil.cpu_count(logical=False) or usable
    return sorted({usable, max(1, min(usable, physical))}, reverse=True)


def ensure_profile(say: Callable[[str], None] | None = None) -> MachineProfile | None:
    """This machine's profile: cached, or measured now (once; other processes wait for it). None when
    profiles are turned off (`POSTTRAIN_MACHINE_PROFILE=0`)."""
    from posttrain._locks import FileLock

    if not _settings.profiling_enabled():
        return None
    load_llama_cpp()
    key = _settings.current_key()
    assert key is not None  # llama.cpp is loaded
    cached = read_profile(key)
    if cached is not None:
        return cached
    path = profile_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):
        cached = read_profile(key)  # measured by another process while this one waited
        if cached is not None:
            return cached
        if say is not None:
            say("measuring llama.cpp on this CPU (once per CPU and llama.cpp build, about half a minute)")
        profile = measure(key)
        write_profile(profile)
    _settings.forget_profile()
    return profile


def forget_machine_profile() -> None:
    """Remove this machine's cached profile: the next `ensure_profile` measures again."""
    load_llama_cpp()
    key = _settings.current_key()
    if key is not None:
        profile_path(key).unlink(missing_ok=True)
    _settings.forget_profile()


def measure(key: str) -> MachineProfile:
    started = time.monotonic()
    identity = cpu_identity()
    build = f"llama-cpp-python {_version()}: {system_info()}"
    safe = {"threads": _settings.cpu_threads(), "n_ubatch": SAFE_UBATCH, "reference": SAFE_REFERENCE}
    extra_bufts, detail = _extra_bufts_decode_safely()
    conditions = None
    try:
        folder = _probe_models()
        probes, conditions = _time_probes(folder, extra_bufts)
        fallback = "" if probes else "the probe measured nothing"
    except RuntimeError as e:
        probes, fallback = (), str(e)
    # Timings taken while other work used the CPUs do not tell settings apart: the safe ones stay
    # (the extra buffer types are a question of safety, not speed, and keep their answer).
    busy = conditions is not None and conditions.busy
    chosen = choose(probes, safe) if probes and not busy else safe
    return MachineProfile(key=key, cpu=cpu_name(identity), build=build, extra_bufts=extra_bufts,
                          extra_bufts_detail=detail, probes=probes, fallback=fallback, conditions=conditions,
                          seconds=round(time.monotonic() - started, 1),
                          measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), **chosen)


def choose(probes: tuple[Probe, ...], safe: dict) -> dict:
    """The configuration to use: among those within MARGIN of the fastest (the same, within the
    probe's noise), the one that departs least from the safe settings, then the fastest. The safe
    settings are what every earlier result was measured with; leaving one must buy real speed."""
    top = max(p.tokens_per_s for p in probes)
    near = [p for p in probes if p.tokens_per_s >= top / (1 + MARGIN)]

    def departures(p: Probe) -> int:
        return sum(getattr(p, name) != value for name, value in safe.items())

    pick = min(near, key=lambda p: (departures(p), -p.tokens_per_s))
    return {"threads": pick.threads, "n_ubatch": pick.n_ubatch, "reference": pick.reference}


def _version() -> str:
    from posttrain._versions import package_version

    return package_version("llama-cpp-python") or "unknown"


def _extra_bufts_decode_safely() -> tuple[bool, str]:
    """The self-test's control: a quantized model decoded with the extra buffer types on, in a child."""
    from posttrain.llamacpp._selftest import decode_with_extra_bufts

    try:
        outcome = decode_with_extra_bufts()
    except RuntimeError as e:  # the self-test model could not be made: keep them off
        return False, f"not tried: {e}"
    return outcome.ok, f"{outcome.status}: {outcome.detail}"


def _probe_file(folder: Path, reference: str) -> Path:
    return folder / f"probe-{reference}.gguf"  # as `convert._selftest_model.probe_path` writes it


def _probe_models() -> Path:
    from posttrain.llamacpp._selftest import MAKER, models_dir

    folder = models_dir()
    if not all(_probe_file(folder, t).is_file() for t in _settings.REFERENCE_TYPES):
        with tempfile.TemporaryDirectory(prefix="posttrain-profile-") as tmp:
            ended = run_module(MAKER, [str(folder), "probe"], log=Path(tmp) / "make.log", timeout_s=PROBE_TIMEOUT_S)
            if ended.returncode != 0:
                raise RuntimeError(f"could not make the probe model ({_how(ended.returncode)}): "
                                   f"{last_line(ended.log) or 'no output'}")
    return folder


def _time_probes(folder: Path, extra_bufts: bool) -> tuple[tuple[Probe, ...], RunConditions]:
    threads = ",".join(map(str, thread_candidates()))
    ubatches = ",".join(map(str, UBATCHES))
    env = {_settings.EXTRA_BUFTS_ENV: "1" if extra_bufts else "0", _settings.PROFILE_ENV: "0"}
    args = ["probe", *(str(_probe_file(folder, t)) for t in _settings.REFERENCE_TYPES), threads, ubatches]
    with tempfile.TemporaryDirectory(prefix="posttrain-profile-") as tmp:
        result = Path(tmp) / "probe.json"
        ended = run_module("posttrain.llamacpp._profile", [*args, str(result)], log=Path(tmp) / "probe.log",
                           env=env, result=result, timeout_s=PROBE_TIMEOUT_S)
        if ended.returncode != 0 or not isinstance(ended.result, dict):
            raise RuntimeError(f"the timing probe ended badly ({_how(ended.returncode)}): "
                               f"{last_line(ended.log) or 'no output'}")
    return tuple(Probe(**p) for p in ended.result["probes"]), RunConditions(**ended.result["conditions"])


def _how(code: int | None) -> str:
    return "timed out" if code is None else describe_exit(code) or f"exit status {code}"


# -- the child side --------------------------------------------------------------------------------
def _prefill_rate(path: str, threads: int, n_ubatch: int) -> float:
    """Tokens per second of a 512-token batch, best of REPEATS, each on an empty cache."""
    from posttrain.llamacpp._engine import LlamaCppEngine, ScoreRequest

    engine = LlamaCppEngine(path, n_ctx=2 * PROBE_TOKENS, n_batch=PROBE_TOKENS, n_ubatch=n_ubatch, n_threads=threads,
                            n_seq_max=1)
    try:
        best = 0.0
        for r in range(REPEATS):
            # A different first token each time: nothing of an earlier batch can be reused.
            tokens = [(i * 7919 + r * 104729) % (engine.n_vocab - 10) + 5 for i in range(PROBE_TOKENS)]
            t0 = time.perf_counter()
            engine.score_sequential([ScoreRequest(tuple(tokens[:-1]), (tokens[-1],))])
            best = max(best, PROBE_TOKENS / (time.perf_counter() - t0))
        return best
    finally:
        engine.close()


def main(argv: list[str]) -> int:
    args = child_args(argv)
    if args is None or len(args) != 6 or args[0] != "probe":  # the parent is gone, or a wrong call
        return 1
    _, f16, bf16, threads, ubatches, result = args
    from posttrain._files import write_json_atomic

    probes = []
    with CpuWatch() as watch:
        for reference, path in (("F16", f16), ("BF16", bf16)):
            for t in map(int, threads.split(",")):
                for u in map(int, ubatches.split(",")):
                    probes.append({"reference": reference, "threads": t, "n_ubatch": u,
                                   "tokens_per_s": round(_prefill_rate(path, t, u), 1)})
    write_json_atomic(Path(result), {"probes": probes, "conditions": watch.conditions.to_json()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
