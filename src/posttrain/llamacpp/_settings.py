"""The llama.cpp settings every load uses, each decided in one order: the environment variable, if
set; else this machine's measured profile (`_profile`), if there is one; else the safe setting
posttrain used before it measured anything (no extra buffer types, every CPU, micro-batch 256, F16).

Reading the profile costs a hash of a few strings and one small file, once per process. It is read
only once llama.cpp is loaded (its system-info line is part of the key), which is true of every
caller: a model load, the engine, `doctor`.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache

from posttrain.llamacpp._profile_store import SAFE_REFERENCE, SAFE_UBATCH, MachineProfile, profile_key, read_profile

EXTRA_BUFTS_ENV = "POSTTRAIN_LLAMA_EXTRA_BUFTS"  # 1: extra CPU buffer types on; 0: off
THREADS_ENV = "POSTTRAIN_LLAMA_THREADS"
UBATCH_ENV = "POSTTRAIN_LLAMA_UBATCH"
REFERENCE_ENV = "POSTTRAIN_REFERENCE_TYPE"  # F16 or BF16: what `doctor` recommends converting the reference to
PROFILE_ENV = "POSTTRAIN_MACHINE_PROFILE"  # 0: never measure nor read a profile (the safe settings)
OVERRIDES = (EXTRA_BUFTS_ENV, THREADS_ENV, UBATCH_ENV, REFERENCE_ENV, PROFILE_ENV)
SETTING_VARIABLES = frozenset(OVERRIDES)  # for the pipeline's check of POSTTRAIN_* names
REFERENCE_TYPES = ("F16", "BF16")

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def cpu_threads() -> int:
    """The CPUs this process may run on (affinity where the OS has it, e.g. Linux and Windows)."""
    import psutil

    try:
        return max(1, len(psutil.Process().cpu_affinity()))
    except (AttributeError, psutil.Error, OSError):  # macOS has no affinity API
        return max(1, os.cpu_count() or 1)


def profiling_enabled() -> bool:
    return os.environ.get(PROFILE_ENV, "").strip().lower() not in _FALSE


def current_key() -> str | None:
    """This machine's profile key; None until llama.cpp is loaded (its system-info line is in the key)."""
    lc = sys.modules.get("llama_cpp")
    if lc is None or not hasattr(lc, "llama_print_system_info"):
        return None
    info = lc.llama_print_system_info().decode(errors="replace").strip()
    return _key(info, cpu_threads())


@lru_cache(maxsize=4)
def _key(system_info: str, threads: int) -> str:
    return profile_key(system_info, threads)


def current_profile() -> MachineProfile | None:
    """The measured profile of this CPU and build, if one is cached and profiles are not turned off."""
    if not profiling_enabled():
        return None
    key = current_key()
    return _read(key) if key else None


_read_cache: dict[str, MachineProfile] = {}


def _read(key: str) -> MachineProfile | None:
    # Kept once found: every load of a process asks. A missing profile is asked again (it may be
    # measured by another process meanwhile).
    if key not in _read_cache:
        profile = read_profile(key)
        if profile is None:
            return None
        _read_cache[key] = profile
    return _read_cache[key]


def forget_profile() -> None:
    """Read the profile afresh at the next question (after measuring one, and in tests)."""
    _read_cache.clear()


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    return True if value in _TRUE else False if value in _FALSE else None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value and int(value) > 0 else None
    except ValueError:
        return None


def extra_bufts_allowed() -> bool:
    """Whether loads may use llama.cpp's extra CPU buffer types: the environment, else the profile
    (on where its self-test decoded safely with them), else off (the AMX crash, issue 10)."""
    flag = _env_flag(EXTRA_BUFTS_ENV)
    if flag is not None:
        return flag
    profile = current_profile()
    return bool(profile and profile.extra_bufts)


def best_threads() -> int:
    profile = current_profile()
    chosen = _env_int(THREADS_ENV) or (profile.threads if profile else None) or cpu_threads()
    return max(1, chosen)


def n_ubatch() -> int:
    profile = current_profile()
    return _env_int(UBATCH_ENV) or (profile.n_ubatch if profile else None) or SAFE_UBATCH


def reference_type() -> str:
    """The faster reference type here (F16 or BF16), as the environment or the profile says."""
    value = os.environ.get(REFERENCE_ENV, "").strip().upper()
    if value in REFERENCE_TYPES:
        return value
    profile = current_profile()
    return profile.reference if profile else SAFE_REFERENCE


def overrides_set() -> dict[str, str]:
    """The overriding environment variables set now (for `doctor`)."""
    return {name: os.environ[name] for name in OVERRIDES if os.environ.get(name, "").strip()}
