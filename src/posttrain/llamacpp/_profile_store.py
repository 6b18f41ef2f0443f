"""The machine profile as a document: what it records, where it lives, and the key that invalidates it.

A profile belongs to one CPU and one llama.cpp build: the key hashes the CPU's identity and feature
flags, the CPUs this process may use, llama-cpp-python's version, llama.cpp's own system-info line
and the size and time of its native libraries (a rebuild with other CMake flags changes them). A
profile of another key is never read, so a new CPU, a rebuild or an upgrade measures again.

This module is on the floor of the floor: `_loading` reads the profile at every model load, and the
measuring side (`_profile`) writes it, so it imports neither.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from posttrain._run_conditions import RunConditions

SCHEMA = "posttrain.machine-profile/1"
# What posttrain did before it measured anything, and what a failed measurement falls back to.
SAFE_UBATCH = 256
SAFE_REFERENCE = "F16"


@dataclass(frozen=True)
class Probe:
    """One timed configuration: a 512-token batch of the probe model, best of the repeats."""

    reference: str  # "F16" or "BF16": the weights' type
    threads: int
    n_ubatch: int
    tokens_per_s: float


@dataclass(frozen=True)
class MachineProfile:
    """llama.cpp's fastest safe settings on this CPU and build, and the evidence for them."""

    key: str
    cpu: str
    build: str
    extra_bufts: bool  # the extra CPU buffer types (AMX, weight repacking) decode safely here
    extra_bufts_detail: str  # how the self-test's decode with them on ended
    threads: int
    n_ubatch: int
    reference: str  # the faster reference type on the probe: "F16" or "BF16"
    probes: tuple[Probe, ...] = ()
    fallback: str = ""  # why the safe settings were kept (a crash or failure while measuring), else ""
    conditions: RunConditions | None = None  # what else the machine did while the probe ran
    seconds: float = 0.0
    measured_at: str = ""
    schema: str = field(default=SCHEMA)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: object) -> MachineProfile | None:
        """The profile in `doc`, or None for anything else (another schema, a damaged file)."""
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            return None
        try:
            known = {f.name for f in fields(cls)}
            values = {k: v for k, v in doc.items() if k in known}
            values["probes"] = tuple(Probe(**p) for p in values.get("probes", ()))
            if values.get("conditions") is not None:
                values["conditions"] = RunConditions(**values["conditions"])
            return cls(**values)
        except (TypeError, ValueError):
            return None

    def speedup(self, reference: str, over: str = SAFE_REFERENCE) -> float | None:
        """How much faster the best configuration of `reference` was than the best of `over`."""
        best = {r: max((p.tokens_per_s for p in self.probes if p.reference == r), default=0.0)
                for r in (reference, over)}
        return best[reference] / best[over] if best[over] > 0 and best[reference] > 0 else None


def cpu_identity() -> str:
    """The CPU's name and feature flags: from /proc/cpuinfo on Linux (a VM may hide features its
    model name suggests, and the flags are what llama.cpp dispatches on), the platform's words elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            first = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split("\n\n")[0]
            wanted = ("vendor_id", "model name", "cpu family", "model", "stepping", "flags")
            pairs = [ln.split(":", 1) for ln in first.splitlines() if ":" in ln]
            return "; ".join(f"{k.strip()}: {v.strip()}" for k, v in pairs if k.strip() in wanted)
        except OSError:
            pass
    return f"{platform.processor() or 'unknown CPU'}; {platform.machine()}"


def cpu_name(identity: str) -> str:
    for part in identity.split("; "):
        if part.startswith("model name: "):
            return part.removeprefix("model name: ")
    return identity.split("; ")[0]


def _native_libraries() -> str:
    """Size and modification time of llama-cpp-python's native libraries: a rebuild changes them."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        return ""
    lib = Path(spec.origin).parent / "lib"
    stats = []
    for p in sorted(lib.glob("*")) if lib.is_dir() else []:
        if p.is_file():
            st = p.stat()
            stats.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return ",".join(stats)


def profile_key(system_info: str, threads: int) -> str:
    from posttrain._versions import package_version

    parts = [cpu_identity(), f"cpus={threads}", f"llama-cpp-python={package_version('llama-cpp-python')}",
             system_info, _native_libraries()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def profile_path(key: str) -> Path:
    from posttrain.paths import cache_dir

    return cache_dir() / "machine-profile" / f"{key}.json"


def read_profile(key: str) -> MachineProfile | None:
    """The cached profile of this key; None when there is none or it is damaged (measured again)."""
    try:
        doc = json.loads(profile_path(key).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    profile = MachineProfile.from_json(doc)
    return profile if profile is not None and profile.key == key else None


def write_profile(profile: MachineProfile) -> Path:
    from posttrain._files import write_json_atomic

    path = profile_path(profile.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, profile.to_json())
    return path

