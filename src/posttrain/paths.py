"""Where posttrain keeps its state, outputs and caches (XDG locations unless overridden)."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import unicodedata
from pathlib import Path, PurePath

from posttrain.errors import PosttrainError


def home() -> Path:
    """The base directory for outputs and the store: $POSTTRAIN_HOME, else $XDG_DATA_HOME/posttrain,
    else the OS's place for an application's data: %LOCALAPPDATA%\\posttrain on Windows (local, not
    roaming: GGUF files are gigabytes), ~/.local/share/posttrain elsewhere."""
    if env := os.environ.get("POSTTRAIN_HOME"):
        return Path(env).expanduser()
    if data := os.environ.get("XDG_DATA_HOME"):
        return Path(data) / "posttrain"
    if sys.platform == "win32" and (local := os.environ.get("LOCALAPPDATA")):
        return Path(local) / "posttrain"
    return Path.home() / ".local" / "share" / "posttrain"


def store_path(base: Path | None = None) -> Path:
    return (base or home()) / "posttrain.db"


def cache_dir() -> Path:
    """Rebuildable downloads (the llama.cpp converter tree): $POSTTRAIN_CACHE, else $XDG_CACHE_HOME/posttrain."""
    if env := os.environ.get("POSTTRAIN_CACHE"):
        return Path(env).expanduser()
    if cache := os.environ.get("XDG_CACHE_HOME"):
        return Path(cache) / "posttrain"
    if sys.platform == "win32" and (local := os.environ.get("LOCALAPPDATA")):
        return Path(local) / "posttrain" / "cache"  # beside the data, as Windows programs keep it
    return Path.home() / ".cache" / "posttrain"


# ---------------------------------------------------------------- names that become paths

_MAX_NAME = 100
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(raw: str, *, fallback: str = "model", max_len: int = _MAX_NAME) -> str:
    """`raw` (a model name, a run label) made safe as ONE path component, the only way posttrain does it.

    Letters with an ASCII base lose their accents (`é` → `e`); then ASCII letters, digits, `.`, `_` and
    `-` are kept and every other run of characters (`/`, `\\`, spaces, NUL) becomes one `-`. Leading and
    trailing `.` and `-` go, so the result is never `..`, never hidden, and never starts like an option.
    A name that lost characters with no ASCII form (Japanese, say) or had to be shortened keeps a short
    hash of the original, so `モデル` and `実験` do not both become `model` and overwrite each other.
    """
    raw = str(raw)
    decomposed = unicodedata.normalize("NFKD", raw)
    lost = any(ord(c) > 127 and not unicodedata.combining(c) for c in decomposed)
    text = _UNSAFE_RUN.sub("-", decomposed.encode("ascii", "ignore").decode("ascii")).strip(".-")
    if not text and not lost:
        return fallback
    if lost or len(text) > max_len:
        digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        text = (text or fallback)[: max_len - len(digest) - 1].rstrip(".-") + "-" + digest
    return text


# Folder names that say nothing about the model: the one above names it instead.
GENERIC_DIR_NAMES = frozenset({"final_model", "final", "model", "output", "outputs", "best_model", "merged"})


def model_label(checkpoint: str | PurePath) -> str:
    """The name a person gave a checkpoint, as written (not made safe): `runs/exp1/final_model` → `exp1`,
    `runs/exp1/checkpoint-500` → `exp1-checkpoint-500`, `D:\\学習\\モデル\\final_model` → `モデル`.

    Pure string work on either separator, so a path recorded on Windows reads the same on Linux (a
    report made elsewhere from a copied store); `safe_name` of it is the model's file and Ollama name."""
    parts = [p for p in re.split(r"[\\/]+", str(checkpoint)) if p and p != "."]
    if not parts:
        return ""
    name = parts[-1]
    parent = parts[-2] if len(parts) > 1 and not parts[-2].endswith(":") else ""
    if name in GENERIC_DIR_NAMES and parent:
        return parent
    if name.startswith("checkpoint-") and parent:
        return f"{parent}-{name}"
    return name


def confined(base: str | Path, relative: str | Path) -> Path:
    """`base / relative` (as given, not resolved), refused with a PosttrainError when it would land
    outside `base` or on `base` itself.

    For paths that come from outside (a manifest entry, a shard name, a user's --name): `..`,
    absolute paths and symlinks that lead out of `base` are all caught, because both sides are
    resolved before they are compared.
    """
    base = Path(base)
    text = str(relative)
    if not text or "\0" in text:
        raise PosttrainError(f"{text!r} is not a usable file name under {base}")
    try:
        root, target = base.resolve(), (base / relative).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop: RuntimeError before Python 3.13
        raise PosttrainError(f"{text!r} under {base} cannot be resolved: {e}") from None
    if target == root or not target.is_relative_to(root):
        raise PosttrainError(f"{text!r} points outside {base}",
                             remedy="names must stay inside their folder: no '..', no absolute paths, "
                                    "no symlinks leading out")
    return base / relative
