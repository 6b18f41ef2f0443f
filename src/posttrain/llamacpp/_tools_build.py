"""llama.cpp's own `llama-imatrix` and `llama-quantize`, built once from the runtime's sdist.

The Python binding cannot compute an importance matrix, nor pass one to the quantizer (a C++ map).
llama.cpp's two tools can. They are built from the sdist of the SAME llama-cpp-python version as the
installed wheel (the sdist the converter already comes from, `posttrain.toolchain`), only those two
targets, CPU only, and cached per version under `<cache>/llama.cpp-tools/<version>-<profile>/`:

- one build at a time (a file lock), and atomic: the build runs in a temporary folder next to the
  cache and only the finished binaries are renamed into place, so a half-built tree is never used;
- the build log of the last attempt stays at `<cache>/llama.cpp-tools/build-<version>-<profile>.log`,
  named in every build error;
- on every use the binaries' hashes are checked against the recorded ones, and the tool's
  `--version` against the runtime (`llama_version()` of the loaded libllama, and the source tag
  stamped into the build): a tool of another version is refused with one line.

A user's own build (`build/bin` of `--llama-cpp-dir`) is used instead when given; it is checked
against the runtime's llama.cpp version (its commit is the user's, so only the version can agree).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from posttrain._lifeline import detached_kwargs, kill_tree, no_window_kwargs
from posttrain._locks import FileLock
from posttrain.errors import PosttrainError
from posttrain.paths import cache_dir
from posttrain.toolchain import download_sdist, llama_cpp_python_version

IMATRIX = "llama-imatrix"
QUANTIZE = "llama-quantize"
TOOLS = (IMATRIX, QUANTIZE)
PROVENANCE = "provenance.json"
# What a build of the two tools needs from vendor/llama.cpp/ (tools/CMakeLists.txt adds every tool's
# folder, so all of tools/ comes along; only the two targets are compiled).
_SOURCES = ("CMakeLists.txt", "cmake/", "ggml/", "src/", "include/", "common/", "vendor/", "tools/", "LICENSE")
# Generous for a cold build on 2 busy cores (measured: see docs/ship.md); a hung compiler still ends.
BUILD_TIMEOUT_S = 3600
CONFIGURE_TIMEOUT_S = 600
VERSION_TIMEOUT_S = 60
_VERSION_LINE = re.compile(r"version: (\S+) \(build (-?\d+), commit (\S+)\)")


class ToolsNotBuilt(PosttrainError):
    """posttrain's build of the tools for this runtime and CPU profile does not exist yet."""


@dataclass(frozen=True)
class LlamaTools:
    """Where the two tools are, and what they are."""

    bin_dir: Path
    llama_version: str  # llama.cpp's library version as the tool prints it (e.g. 0.5.0-dev)
    commit: str  # the build's commit stamp: llama-cpp-python-<ver> for a build from the sdist
    source: str  # "sdist" or "user"
    profile: str | None = None

    @property
    def imatrix(self) -> Path:
        return self.bin_dir / executable_name(IMATRIX)

    @property
    def quantize(self) -> Path:
        return self.bin_dir / executable_name(QUANTIZE)

    def to_json(self) -> dict:
        return {"bin_dir": str(self.bin_dir), "llama_version": self.llama_version, "commit": self.commit,
                "source": self.source, "profile": self.profile}


def executable_name(tool: str) -> str:
    """A tool's file name on this OS: `llama-imatrix.exe` on Windows, `llama-imatrix` elsewhere."""
    return f"{tool}.exe" if sys.platform == "win32" else tool


def source_tag(ver: str) -> str:
    """The commit stamp of a build from the llama-cpp-python `ver` sdist (the sdist holds no git history)."""
    return f"llama-cpp-python-{ver}"


def build_profile() -> tuple[str, list[str]]:
    """(profile name, CMake instruction-set options) of the cached build.

    GGML_NATIVE=OFF: a native build (-march=native) runs only on CPUs with the builder's features, and
    the cache may sit in a home shared by machines that differ (facts.md: not all machines of this
    kind have the same CPU; AMX crashes native builds). A non-native build with an explicit set of
    features runs on any CPU that has them, so the profile, which is part of the cache key, names
    that set. On x86-64 that is llama.cpp's own non-native default (SSE4.2, AVX, AVX2, FMA, F16C, BMI2:
    x86-64-v3) when this CPU has it, else no SIMD options at all. The tools are used on F16 models
    (imatrix) and for quantizing, where these features are most of the speed and AVX-512 adds little.
    """
    machine = platform.machine().lower() or "unknown"
    base = ["-DGGML_NATIVE=OFF"]
    if machine in ("x86_64", "amd64"):
        # Spelled out rather than left to ggml's non-native defaults, which change with SOURCE_DATE_EPOCH.
        state = "ON" if _has_x86_64_v3() else "OFF"
        isa = [f"-DGGML_{f}={state}" for f in ("SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2")]
        isa += [f"-DGGML_{f}=OFF" for f in ("AVX512", "AVX_VNNI", "AMX_TILE", "AMX_INT8", "AMX_BF16")]
        return f"{sys.platform}-x86_64{'-v3' if state == 'ON' else ''}", base + isa
    return f"{sys.platform}-{machine}", base


def _has_x86_64_v3() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return True  # not Linux: assume a CPU of the last decade (macOS on Intel, Windows)
    line = next((ln for ln in flags.splitlines() if ln.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"} <= have


def runtime_llama_version() -> str:
    """llama.cpp's version as the loaded runtime library reports it (`llama_version()` of libllama)."""
    from posttrain.llamacpp._loading import load_llama_cpp

    return load_llama_cpp().llama_version().decode(errors="replace")


def tool_version(binary: Path) -> tuple[str, int, str]:
    """(llama.cpp version, build number, commit) printed by `binary --version`."""
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, errors="replace",
                              timeout=VERSION_TIMEOUT_S, **no_window_kwargs())
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PosttrainError(f"{binary} cannot be run: {e}", remedy="rebuild it or point posttrain at another build") from None
    m = _VERSION_LINE.search(proc.stdout + proc.stderr)
    if m is None:
        raise PosttrainError(f"{binary} --version printed no llama.cpp version line",
                             remedy="use llama.cpp's own llama-imatrix (or let posttrain build it)")
    return m.group(1), int(m.group(2)), m.group(3)


def check_tool(binary: Path, *, expected_commit: str | None) -> tuple[str, str]:
    """Refuse a tool whose llama.cpp differs from the runtime's; returns (version, commit)."""
    found, _, commit = tool_version(binary)
    runtime = runtime_llama_version()
    ver = llama_cpp_python_version()
    if found != runtime or (expected_commit is not None and commit != expected_commit):
        want = f"{runtime} ({expected_commit})" if expected_commit else runtime
        raise PosttrainError(
            f"{binary} is llama.cpp {found} ({commit}), but the runtime (llama-cpp-python {ver}) is llama.cpp "
            f"{want}: refusing to mix versions",
            remedy=(f"delete {binary.parent.parent} (posttrain rebuilds it from the matching sdist)" if expected_commit
                    else f"build llama.cpp {runtime} there, or leave --llama-cpp-dir out to use posttrain's own build"))
    return found, commit


def find_llama_tools(tools_dir: str | Path | None = None, *, build: bool = True,
                     say: Callable[[str], None] | None = None) -> LlamaTools:
    """The tools to use: `tools_dir` (a user's build/bin) if given, else posttrain's cached build
    from the runtime's sdist, built now when missing and `build` is true (`say` is told first: it
    takes minutes)."""
    if tools_dir is not None:
        return _user_tools(Path(tools_dir))
    ver = llama_cpp_python_version()
    profile, _ = build_profile()
    root = tools_cache() / f"{ver}-{profile}"
    tools = _verified_build(root, ver)
    if tools is None:
        if not build:
            raise ToolsNotBuilt(f"llama.cpp's llama-imatrix and llama-quantize for llama-cpp-python {ver} are not built",
                                remedy="`posttrain doctor --build-imatrix-tools` builds them (minutes, once per version)")
        with FileLock(root.parent / f".{root.name}.lock"):
            tools = _verified_build(root, ver)  # another process may have built it while we waited
            if tools is None:
                if say:
                    say(f"building llama-imatrix and llama-quantize from the llama-cpp-python {ver} sdist, once "
                        f"(~15 min on 2 cores; log: {build_log_path(root)})")
                build_tools(ver, root)
                tools = _verified_build(root, ver)
    if tools is None:  # pragma: no cover - build_tools raises on every failure it can see
        raise PosttrainError(f"the tools built into {root} are not usable", remedy=f"delete {root} and run again")
    return tools


def tools_cache() -> Path:
    return cache_dir() / "llama.cpp-tools"


def build_log_path(root: Path) -> Path:
    return root.parent / f"build-{root.name}.log"


def _user_tools(bin_dir: Path) -> LlamaTools:
    bin_dir = bin_dir.expanduser().resolve()
    for name in map(executable_name, TOOLS):
        if not os.access(bin_dir / name, os.X_OK):
            raise PosttrainError(f"{bin_dir} holds no executable {name}",
                                 remedy="build llama.cpp's llama-imatrix and llama-quantize there, or leave it to posttrain")
    version, commit = check_tool(bin_dir / executable_name(IMATRIX), expected_commit=None)
    return LlamaTools(bin_dir, version, commit, "user")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _verified_build(root: Path, ver: str) -> LlamaTools | None:
    meta_path = root / PROVENANCE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("binaries"), dict):
        raise PosttrainError(f"{meta_path} is damaged", remedy=f"delete {root} and run again to rebuild the tools")
    for name in TOOLS:
        path = root / "bin" / executable_name(name)
        if not path.is_file() or _sha256(path) != meta["binaries"].get(name):
            raise PosttrainError(f"the built {name} at {path} was modified or removed (hash mismatch)",
                                 remedy=f"delete {root} and run again to rebuild the tools")
    version, commit = check_tool(root / "bin" / executable_name(IMATRIX), expected_commit=source_tag(ver))
    return LlamaTools(root / "bin", version, commit, "sdist", meta.get("profile"))


def _extract_sources(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) < 2 or not parts[1].startswith("vendor/llama.cpp/"):
                continue
            rel = parts[1][len("vendor/llama.cpp/"):]
            if rel and any(rel == n or rel.startswith(n) for n in _SOURCES):
                member.name = rel
                tar.extract(member, dest, filter="data")
    if not (dest / "CMakeLists.txt").is_file() or not (dest / "tools" / "imatrix").is_dir():
        raise PosttrainError(f"{sdist.name} holds no llama.cpp sources with tools/imatrix",
                             remedy="pass --llama-cpp-dir with your own llama.cpp build")


def _jobs() -> int:
    from posttrain.llamacpp._loading import cpu_threads

    return cpu_threads()  # the CPUs this process may use, on every OS


def cmake_generator() -> list[str]:
    """Ninja where it is installed (one folder of binaries, parallel by default); otherwise CMake's
    own default for the OS, e.g. Visual Studio's on Windows, whose binaries land in bin/Release/."""
    return ["-G", "Ninja"] if shutil.which("ninja") else []


def built_binary(build: Path, tool: str) -> Path:
    """Where a generator put `tool`: bin/ (Ninja, Makefiles) or bin/Release/ (multi-config ones)."""
    for folder in (build / "bin", build / "bin" / "Release"):
        if (folder / executable_name(tool)).is_file():
            return folder / executable_name(tool)
    raise PosttrainError(f"the build made no {executable_name(tool)} under {build / 'bin'}",
                         remedy=f"see the build log {build_log_path(build)}")


def cmake_configure_args(src: Path, build: Path, ver: str) -> list[str]:
    _, isa = build_profile()
    return ["cmake", "-S", str(src), "-B", str(build), *cmake_generator(), "-DCMAKE_BUILD_TYPE=Release",
            # Static: the two binaries need nothing from the temporary build folder once renamed.
            "-DBUILD_SHARED_LIBS=OFF", *isa, "-DGGML_CUDA=OFF",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
            "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON",
            # No downloads from the tools (LLAMA_CURL is deprecated in this tree; OpenSSL is its successor).
            "-DLLAMA_OPENSSL=OFF",
            # The sdist has no git history: stamp the build with its source, which --version then prints.
            "-DLLAMA_BUILD_NUMBER=0", f"-DLLAMA_BUILD_COMMIT={source_tag(ver)}"]


def build_tools(ver: str, root: Path) -> Path:
    """Build llama-imatrix and llama-quantize from the llama-cpp-python `ver` sdist into `root` (atomic)."""
    if shutil.which("cmake") is None:
        raise PosttrainError("building llama.cpp's tools needs cmake, which is not on PATH",
                             remedy="install cmake (and a C++ compiler), or pass --llama-cpp-dir with your own build")
    root.parent.mkdir(parents=True, exist_ok=True)
    log = build_log_path(root)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".build-{root.name}-") as tmp:
        tmp = Path(tmp)
        sdist = download_sdist(ver, tmp / "dl")
        src = tmp / "src"
        _extract_sources(sdist, src)
        build = tmp / "build"
        started = time.monotonic()
        with open(log, "w") as logf:
            _run_logged(cmake_configure_args(src, build, ver), logf, log, CONFIGURE_TIMEOUT_S, "configuring")
            _run_logged(["cmake", "--build", str(build), "--config", "Release", "--target", *TOOLS,
                         "-j", str(_jobs())],
                        logf, log, BUILD_TIMEOUT_S, "building")
        seconds = time.monotonic() - started
        staging = tmp / "tree"
        (staging / "bin").mkdir(parents=True)
        for name in TOOLS:
            shutil.copy2(built_binary(build, name), staging / "bin" / executable_name(name))
        shutil.copy2(log, staging / "build.log")
        profile, isa = build_profile()
        with open(sdist, "rb") as f:
            sdist_sha = hashlib.file_digest(f, "sha256").hexdigest()
        meta = {"llama_cpp_python": ver, "sdist": sdist.name, "sdist_sha256": sdist_sha, "profile": profile,
                "cmake_isa": isa, "build_seconds": round(seconds, 1), "jobs": _jobs(),
                "binaries": {name: _sha256(staging / "bin" / executable_name(name)) for name in TOOLS}}
        (staging / PROVENANCE).write_text(json.dumps(meta, indent=2))
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    return root


def _run_logged(cmd: list[str], logf, log: Path, timeout: float, what: str) -> None:
    logf.write("$ " + " ".join(cmd) + "\n")
    logf.flush()
    # Its own process group: on a timeout or Ctrl-C the compilers ninja started end with it (Windows:
    # a new process group with a hidden console, ended tree and all by kill_tree).
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, **detached_kwargs())
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise PosttrainError(f"{what} llama.cpp's tools took more than {timeout:.0f} s and was stopped",
                             remedy=f"see the build log {log}") from None
    except BaseException:
        _kill_group(proc)
        raise
    if rc != 0:
        raise PosttrainError(f"{what} llama.cpp's tools failed (exit {rc})", remedy=f"see the build log {log}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, 9)
        else:
            kill_tree(proc.pid)
    except OSError:
        pass
    proc.wait()

