"""llama.cpp's official converter, provisioned to match the installed runtime.

The llama-cpp-python wheel ships the runtime and the quantizer but not `convert_hf_to_gguf.py`.
Its sdist carries the whole upstream tree under `vendor/llama.cpp/`, so the converter is taken from
the sdist of the SAME version as the installed wheel: converter and runtime then agree on the GGUF
format. The tree is provisioned once into the cache, its sdist hash recorded, and its files checked
against the recorded tree hash on every use. A user's own llama.cpp checkout can be used instead
(`--llama-cpp-dir` or `$POSTTRAIN_LLAMA_CPP_DIR`).

`scripts/setup.sh` downloads the sdist once, builds the runtime from that file and provisions the
converter from it (`posttrain doctor --provision --sdist FILE`): no second download, nothing left for
the first run. A runtime installed some other way is provisioned on first use: pip fetches the sdist
(with `--no-binary llama-cpp-python` only, so the build backends it needs come as wheels; `:all:` built
every one of them from source, 4.2 min here), shown on the display and written to the log.
The sdist is kept beside the tree (`<cache>/llama.cpp/sdist/`): the imatrix tools' build and a
re-provisioning read it instead of downloading it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from posttrain import _progress
from posttrain._lifeline import no_window_kwargs
from posttrain.errors import PosttrainError, TransientError
from posttrain.paths import cache_dir

log = logging.getLogger("posttrain.toolchain")

CONVERTER = "convert_hf_to_gguf.py"
# The PEFT LoRA → GGUF adapter converter; it reuses the converter's conversion/ package.
LORA_CONVERTER = "convert_lora_to_gguf.py"
# What the converters need from the tree; nothing else is extracted.
_NEEDED = (CONVERTER, LORA_CONVERTER, "conversion/", "gguf-py/", "LICENSE")
PROVENANCE = "provenance.json"
# pip's name for the sdist file; the version is read back from it.
_SDIST_NAME = re.compile(r"llama_cpp_python-(?P<version>[^/\\]+?)\.tar\.gz$")


class ConverterNotProvisioned(PosttrainError):
    """The converter for the installed runtime is not in the cache yet (nothing is damaged)."""


@dataclass(frozen=True)
class ConverterTree:
    root: Path
    source: str  # "sdist" or "user"
    llama_cpp_python: str
    sdist_sha256: str | None = None

    @property
    def script(self) -> Path:
        return self.root / CONVERTER

    @property
    def lora_script(self) -> Path:
        return self.root / LORA_CONVERTER

    @property
    def gguf_py(self) -> Path:
        return self.root / "gguf-py"

    def describe(self) -> str:
        if self.source == "user":
            return f"user checkout {self.root}"
        return f"llama-cpp-python {self.llama_cpp_python} sdist (sha256 {self.sdist_sha256[:12]}…) at {self.root}"


def llama_cpp_python_version() -> str:
    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise PosttrainError("llama-cpp-python is not installed",
                             remedy="pip install 'llama-cpp-python[server]' (builds llama.cpp, ~13 min on 2 cores)") from None


def _tree_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != PROVENANCE and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _check_user_tree(root: Path) -> ConverterTree:
    root = root.expanduser().resolve()
    if not (root / CONVERTER).is_file() or not (root / "gguf-py").is_dir():
        raise PosttrainError(f"{root} is not a llama.cpp checkout: {CONVERTER} or gguf-py/ is missing",
                             remedy="point --llama-cpp-dir at the top of a llama.cpp source tree")
    return ConverterTree(root, "user", llama_cpp_python_version())


def find_converter(llama_cpp_dir: str | Path | None = None, *, provision: bool = True,
                   sdist: str | Path | None = None) -> ConverterTree:
    """The converter tree to use: the user's checkout if given, else the cached, verified sdist tree,
    provisioned now when missing and `provision` (from `sdist`, a local file, when given)."""
    given = llama_cpp_dir or os.environ.get("POSTTRAIN_LLAMA_CPP_DIR")
    if given:
        return _check_user_tree(Path(given))
    ver = llama_cpp_python_version()
    root = converter_root(ver)
    tree = _verified_cached_tree(root, ver)
    if tree is not None:
        return tree
    if not provision:
        raise ConverterNotProvisioned(
            f"llama.cpp's converter for llama-cpp-python {ver} is not provisioned",
            remedy="run `posttrain doctor --provision` (downloads the sdist once, ~75 MB; scripts/setup.sh does it)")
    return provision_converter(ver, root, sdist)


def converter_root(ver: str) -> Path:
    return cache_dir() / "llama.cpp" / ver


def kept_sdist_dir() -> Path:
    """Where the runtime's sdist is kept once fetched (rebuildable: deleting it costs one download)."""
    return cache_dir() / "llama.cpp" / "sdist"


def sdist_version(sdist: Path) -> str:
    """The llama-cpp-python version of an sdist file, from its name (pip's `llama_cpp_python-V.tar.gz`)."""
    m = _SDIST_NAME.search(sdist.name)
    if m is None:
        raise PosttrainError(f"{sdist} is not a llama-cpp-python sdist (expected llama_cpp_python-VERSION.tar.gz)")
    return m["version"]


def _verified_cached_tree(root: Path, ver: str) -> ConverterTree | None:
    meta_path = root / PROVENANCE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # not UTF-8 or not JSON: the file was damaged
        meta = None
    if not isinstance(meta, dict):
        raise PosttrainError(f"{meta_path} is damaged", remedy=f"delete {root} and run again to provision it afresh")
    if meta.get("tree_sha256") != _tree_sha256(root):
        raise PosttrainError(f"the provisioned converter tree at {root} was modified (tree hash mismatch)",
                             remedy=f"delete {root} and run again to provision it afresh")
    if not (root / LORA_CONVERTER).is_file():
        return None  # provisioned by a posttrain that did not extract the LoRA converter: provision again
    return ConverterTree(root, "sdist", ver, meta.get("sdist_sha256"))


@retry(retry=retry_if_exception_type(TransientError), stop=stop_after_attempt(3),
       wait=wait_exponential(multiplier=2, max=30), reraise=True)
def download_sdist(ver: str, dest: Path | None = None) -> Path:
    """The llama-cpp-python `ver` sdist: the kept one when there is one, else downloaded into `dest`
    (default: the kept place, so the next caller finds it)."""
    kept = kept_sdist_dir() / f"llama_cpp_python-{ver}.tar.gz"
    if kept.is_file():
        return kept
    dest = dest or kept_sdist_dir()
    dest.mkdir(parents=True, exist_ok=True)
    # Into a folder of its own, renamed when complete: another process looking for the kept file never
    # takes a half-downloaded one.
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        # --no-binary names only llama-cpp-python: its build backend (scikit-build-core) and theirs are
        # wheels. `--no-binary :all:` made pip build every one of them from source (4.2 min on 2 cores).
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
               f"llama-cpp-python=={ver}", "-d", tmp, "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True, **no_window_kwargs())
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise TransientError(f"pip could not download the llama-cpp-python {ver} sdist: {tail[0]}",
                                 remedy="check access to the package index, or pass --llama-cpp-dir")
        found = Path(tmp) / kept.name
        if not found.is_file():
            raise PosttrainError(f"pip downloaded no sdist for llama-cpp-python {ver}")
        os.replace(found, dest / kept.name)
    return dest / kept.name


def keep_sdist(sdist: Path) -> Path:
    """A copy of a local sdist in the kept place (a hard link where the file system allows)."""
    kept = kept_sdist_dir() / sdist.name
    if kept.is_file() and kept.stat().st_size == sdist.stat().st_size:
        return kept
    kept.parent.mkdir(parents=True, exist_ok=True)
    partial = kept.with_name(f".{kept.name}.{os.getpid()}.partial")
    try:
        os.link(sdist, partial)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(sdist, partial)
    os.replace(partial, kept)
    return kept


def provision_converter(ver: str, root: Path | None = None, sdist: str | Path | None = None) -> ConverterTree:
    """Extract the converter's files of the llama-cpp-python `ver` sdist into `root`: from `sdist`, a
    local file (scripts/setup.sh passes the one the runtime was built from), else the kept or a freshly
    downloaded one. The wait is shown on the current display (if any) and logged."""
    root = root or converter_root(ver)
    if sdist is not None:
        sdist = Path(sdist)
        if not sdist.is_file():
            raise PosttrainError(f"{sdist} does not exist")
        if (found := sdist_version(sdist)) != ver:
            raise PosttrainError(f"{sdist.name} is llama-cpp-python {found}, the installed runtime is {ver}: "
                                 f"the converter must match the runtime",
                                 remedy=f"pass the llama-cpp-python {ver} sdist, or leave --sdist out to fetch it")
    what = (f"provisioning llama.cpp's converter from {sdist.name}" if sdist is not None else
            f"provisioning llama.cpp's converter ({ver} sdist, ~75 MB, once)")  # short: one 80-column line
    log.info("%s into %s", what, root)
    started = time.monotonic()
    with _progress.busy(what):
        tree = _provision(ver, root, sdist)
    log.info("provisioned llama.cpp's converter (llama-cpp-python %s) in %.1f s", ver, time.monotonic() - started)
    return tree


def _provision(ver: str, root: Path, sdist: Path | None) -> ConverterTree:
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".provision-") as tmp:
        tmp = Path(tmp)
        # Kept either way: the imatrix tools are built from the same file (posttrain.llamacpp).
        sdist = keep_sdist(sdist) if sdist is not None else download_sdist(ver)
        # pip checked the index's published hash while downloading; the hash is kept for provenance.
        with open(sdist, "rb") as f:
            sdist_sha = hashlib.file_digest(f, "sha256").hexdigest()
        staging = tmp / "tree"
        with tarfile.open(sdist) as tar:
            prefix = None
            for member in tar.getmembers():
                parts = member.name.split("/", 1)
                if len(parts) < 2 or not parts[1].startswith("vendor/llama.cpp/"):
                    continue
                rel = parts[1][len("vendor/llama.cpp/"):]
                if not rel or not any(rel == n or rel.startswith(n) for n in _NEEDED):
                    continue
                prefix = parts[0]
                member.name = rel
                tar.extract(member, staging, filter="data")
        if prefix is None or not (staging / CONVERTER).is_file():
            raise PosttrainError(f"the llama-cpp-python {ver} sdist holds no vendor/llama.cpp/{CONVERTER}",
                                 remedy="pass --llama-cpp-dir pointing at a llama.cpp checkout")
        meta = {"llama_cpp_python": ver, "sdist": sdist.name, "sdist_sha256": sdist_sha,
                "tree_sha256": _tree_sha256(staging)}
        (staging / PROVENANCE).write_text(json.dumps(meta, indent=2))
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    return ConverterTree(root, "sdist", ver, sdist_sha)


def converter_env(tree: ConverterTree) -> dict[str, str]:
    """Environment for the converter subprocess: its own gguf-py first, the PyPI `gguf` is too old."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree.gguf_py), str(tree.root), env.get("PYTHONPATH")]))
    env.pop("NO_LOCAL_GGUF", None)
    return env
