"""Where posttrain keeps its state, outputs and caches (XDG locations unless overridden)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The base directory for outputs and the store: $POSTTRAIN_HOME, else $XDG_DATA_HOME/posttrain."""
    if env := os.environ.get("POSTTRAIN_HOME"):
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "posttrain"


def store_path(base: Path | None = None) -> Path:
    return (base or home()) / "posttrain.db"


def cache_dir() -> Path:
    """Rebuildable downloads (the llama.cpp converter tree): $POSTTRAIN_CACHE, else $XDG_CACHE_HOME/posttrain."""
    if env := os.environ.get("POSTTRAIN_CACHE"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "posttrain"
