"""llama.cpp, loaded the one safe way: before numpy and torch, and with parameters every CPU survives.

Two faults seen on real machines decide what this module does (`../shared/facts.md`, issue 10):

- **AMX.** On Intel CPUs with AMX, a natively built llama.cpp registers an AMX "extra buffer type"
  for weights; the first `llama_decode` of a quantized model then dies with a general protection
  fault (`ldtilecfg` in `ggml_backend_amx_mul_mat`). Every load therefore asks for no extra buffer
  types (`use_extra_bufts = False`), which also turns off llama.cpp's CPU weight repacking. The
  patch below applies that to `llama_model_default_params()` itself, so the high-level
  `llama_cpp.Llama` (the conversion check, the server) gets it as well as posttrain's own engine.
  Where the machine profile's self-test decoded safely with them (`_profile`), they are on again;
  `POSTTRAIN_LLAMA_EXTRA_BUFTS=1` or `0` decides instead of the profile.
- **CUDA.** A CUDA build of llama-cpp-python segfaults in `llama_model_load_from_file` when numpy or
  torch was imported before `llama_cpp` in the same process. `import posttrain` imports llama_cpp
  first (`posttrain/__init__.py`), so every posttrain process, and every child it starts, has
  llama.cpp's libraries loaded before numpy's and torch's.
"""

from __future__ import annotations

import sys
from typing import Any

from posttrain.errors import PosttrainError
from posttrain.llamacpp._settings import extra_bufts_allowed

# llama-cpp-python's own spelling of "offload every layer" (INT32_MAX; llama.cpp clamps it).
ALL_LAYERS = 0x7FFFFFFF
# Libraries that must not be loaded before llama.cpp in a CUDA process.
LOAD_AFTER = ("numpy", "torch")

_patched = False
# Which of LOAD_AFTER were already imported when llama_cpp was first imported through here.
loaded_before: tuple[str, ...] = ()


def _install_safe_defaults(lc: Any) -> None:
    """Wrap `llama_model_default_params` so that every caller, ours or llama-cpp-python's, gets the
    safe parameters. Idempotent."""
    global _patched
    if _patched:
        return
    raw = lc.llama_cpp.llama_model_default_params

    def llama_model_default_params():
        params = raw()
        if hasattr(params, "use_extra_bufts") and not extra_bufts_allowed():
            params.use_extra_bufts = False
        return params

    llama_model_default_params.posttrain_raw = raw  # the unpatched original, for `doctor`'s control run
    # `llama_cpp.Llama` looks the function up on the llama_cpp.llama_cpp module at each load; the
    # package re-exports it, so both names are replaced.
    lc.llama_cpp.llama_model_default_params = llama_model_default_params
    lc.llama_model_default_params = llama_model_default_params
    _patched = True


def load_llama_cpp(required: bool = True) -> Any:
    """The `llama_cpp` module, imported (first, if nobody did yet) and made safe. None when it is not
    installed and `required` is false."""
    global loaded_before
    if "llama_cpp" not in sys.modules:
        loaded_before = tuple(name for name in LOAD_AFTER if name in sys.modules)
    try:
        import llama_cpp
    except ImportError as e:
        if not required:
            return None
        raise PosttrainError(f"llama-cpp-python cannot be imported: {e}",
                             remedy="pip install 'llama-cpp-python[server]' (or run scripts/setup.sh)") from None
    except OSError as e:  # the shared library is there but cannot be loaded (wrong CPU, missing CUDA)
        if not required:
            return None
        raise PosttrainError(f"llama.cpp's library cannot be loaded: {e}",
                             remedy="reinstall llama-cpp-python for this machine (scripts/setup.sh)") from None
    _install_safe_defaults(llama_cpp)
    return llama_cpp


def raw_default_params() -> Any:
    """llama.cpp's model defaults as they come, without posttrain's fixes (doctor's control run)."""
    lc = load_llama_cpp()
    fn = lc.llama_cpp.llama_model_default_params
    return getattr(fn, "posttrain_raw", fn)()


def gpu_offload_supported() -> bool:
    lc = load_llama_cpp()
    return bool(lc.llama_supports_gpu_offload())


def resolve_gpu_layers(n_gpu_layers: int | None) -> int:
    """`None` → every layer when this build offloads (CUDA, Metal, Vulkan…), else 0; -1 → every layer."""
    if n_gpu_layers is None:
        return ALL_LAYERS if gpu_offload_supported() else 0
    if n_gpu_layers < -1:
        raise PosttrainError(f"--n-gpu-layers must be -1 (all), 0 (none) or a layer count, not {n_gpu_layers}")
    return ALL_LAYERS if n_gpu_layers == -1 else n_gpu_layers


def model_params(n_gpu_layers: int | None = None) -> Any:
    """Model parameters for a load: the safe defaults, and the GPU layers asked for (or all, on a GPU build)."""
    lc = load_llama_cpp()
    params = lc.llama_model_default_params()
    params.n_gpu_layers = resolve_gpu_layers(n_gpu_layers)
    return params


def llama_kwargs(n_gpu_layers: int | None = None) -> dict[str, Any]:
    """Keyword arguments for `llama_cpp.Llama(...)` that match `model_params` (its -1 means all layers)."""
    layers = resolve_gpu_layers(n_gpu_layers)
    return {"n_gpu_layers": -1 if layers == ALL_LAYERS else layers}


def system_info() -> str:
    """llama.cpp's own one-line description of the CPU features and backends this build uses."""
    lc = load_llama_cpp(required=False)
    if lc is None:
        return "llama-cpp-python not installed"
    return lc.llama_print_system_info().decode(errors="replace").strip()


# llama.cpp's system-info names → the CMake options that build exactly those CPU features, without AMX.
_CPU_FLAGS = {"AVX": "GGML_AVX", "AVX2": "GGML_AVX2", "F16C": "GGML_F16C", "FMA": "GGML_FMA", "BMI2": "GGML_BMI2",
              "AVX_VNNI": "GGML_AVX_VNNI", "AVX512": "GGML_AVX512", "AVX512_VBMI": "GGML_AVX512_VBMI",
              "AVX512_VNNI": "GGML_AVX512_VNNI", "AVX512_BF16": "GGML_AVX512_BF16"}


def cmake_args_without_amx(info: str | None = None) -> str:
    """CMAKE_ARGS for a llama.cpp build with this CPU's features but no AMX: the other way out of the
    AMX crash, for builds that must keep llama.cpp's weight repacking on."""
    info = system_info() if info is None else info
    have = {part.split("=")[0].strip() for part in info.replace("|", "\n").splitlines()
            if part.strip().endswith("= 1")}
    flags = ["-DGGML_NATIVE=OFF", *(f"-D{opt}=ON" for name, opt in _CPU_FLAGS.items() if name in have)]
    return " ".join(flags)
