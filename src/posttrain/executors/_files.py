"""Getting a coordinator's file (a GGUF) to the node that needs it.

A `SharedFile` travels with a unit of work. On a worker it becomes a local path: the file itself
when every node sees it (`--shared-dir`, or the local executor), else a copy fetched once per node
from Ray's object store, checked against its sha256 and kept in the node's cache, so the next
unit on that node reuses it. Chunks keep the object store from holding one multi-GB object.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.errors import PosttrainError

CHUNK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class SharedFile:
    path: str  # the coordinator's path; what a worker reads when `chunks` is empty
    sha256: str
    size: int
    name: str
    chunks: list = field(default_factory=list)  # Ray ObjectRefs, in order; nested so Ray passes them unresolved

    def local_path(self) -> Path:
        """Where this node reads the file (fetching it first when it travels by object store)."""
        if not self.chunks:
            return Path(self.path)
        return _cached_copy(self)


def cache_dir() -> Path:
    return Path(os.environ.get("POSTTRAIN_NODE_CACHE") or Path(tempfile.gettempdir()) / "posttrain-node-cache")


def _cached_copy(shared: SharedFile) -> Path:
    from posttrain._locks import FileLock

    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{shared.sha256}.gguf"
    # One fetch per node: the units of one node wait for the first to finish, then read its copy.
    with FileLock(folder / f"{shared.sha256}.lock"):
        if final.is_file() and final.stat().st_size == shared.size:
            return final
        _fetch(shared, final)
    return final


def _fetch(shared: SharedFile, final: Path) -> None:
    import ray

    digest = hashlib.sha256()
    tmp = final.with_name(final.name + f".{os.getpid()}.part")
    try:
        with tmp.open("wb") as fh:
            for ref in shared.chunks:
                data = ray.get(ref)
                digest.update(data)
                fh.write(data)
        if digest.hexdigest() != shared.sha256:
            raise PosttrainError(f"{shared.name} arrived damaged on this node (sha256 {digest.hexdigest()[:12]}… "
                                 f"instead of {shared.sha256[:12]}…)", remedy="run again; check the node's disk")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def put_chunks(path: Path) -> list:
    """The file's bytes in the object store, CHUNK_BYTES at a time (the coordinator holds one chunk at once)."""
    import ray

    refs = []
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            refs.append(ray.put(chunk))
    return refs
