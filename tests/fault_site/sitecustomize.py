"""Counted writes and one injected I/O error, for the crash-consistency harness (issue 33).

A process started with this folder on PYTHONPATH imports this module first, as every Python process
imports `sitecustomize`, and so do the processes it starts (a step's child, a quantizer): the whole
process tree of one `posttrain run`. When posttrain's `posttrain._files` is imported, its seam
`about_to_write(path)` (called before every atomic write and every store transaction) is wrapped:

- CRASH_HARNESS_WRITES=FILE: every write is appended to FILE as `n<TAB>pid<TAB>path`, n counting
  the writes of the whole process tree (a lock next to FILE makes the count exact across processes);
- CRASH_HARNESS_FAULT=K:ENOSPC (or K:EIO): the K-th write raises OSError(ENOSPC, …, path) instead,
  once, as a disk that filled up (or failed) for that one write would;
- CRASH_HARNESS_IGNORE=TEXT[;TEXT…]: writes to paths containing one of these are neither counted nor
  failed (a child's progress file, rewritten every half second: counting it would make the k-th write
  a different one in every run).

Nothing else is changed, and product code reads none of this: the wrapping is done from outside.
"""

import os
import sys

_WRITES = os.environ.get("CRASH_HARNESS_WRITES")

if _WRITES:
    import importlib.abc
    import importlib.machinery

    _FAULT = os.environ.get("CRASH_HARNESS_FAULT", "")
    _AT, _, _ERRNO = _FAULT.partition(":")
    _IGNORE = [t for t in os.environ.get("CRASH_HARNESS_IGNORE", "").split(";") if t]

    def _count(path) -> int:
        """This write's number in the whole process tree; the write is logged with it."""
        import portalocker

        with portalocker.Lock(_WRITES + ".lock", mode="a", timeout=60):
            try:
                with open(_WRITES, encoding="utf-8") as f:
                    n = sum(1 for _ in f) + 1
            except FileNotFoundError:
                n = 1
            with open(_WRITES, "a", encoding="utf-8") as f:
                f.write(f"{n}\t{os.getpid()}\t{path}\n")
        return n

    def _wrap(module) -> None:
        import errno

        real = module.about_to_write

        def about_to_write(path):
            if any(t in str(path) for t in _IGNORE):
                return real(path)
            n = _count(path)
            if _AT and n == int(_AT):
                code = getattr(errno, _ERRNO)
                raise OSError(code, os.strerror(code), str(path))
            real(path)

        module.about_to_write = about_to_write

    class _WrapFiles(importlib.abc.MetaPathFinder):
        """Finds posttrain._files as the normal path finder would, and wraps its seam once loaded."""

        def find_spec(self, name, path, target=None):
            if name != "posttrain._files":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                _wrap(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _WrapFiles())
