"""Exclusive locks that the operating system drops when their holder dies, however it dies.

Three places need one: a run (one process drives it), a home (one watcher), an output folder (two
conversions take turns). `portalocker` gives the same primitive everywhere: `flock` on Linux and
macOS, `LockFileEx` on Windows; posttrain has no platform-specific locking code of its own.

The holder's PID is written into the lock file for messages ("already in progress (PID 123)").
Windows locks the file's bytes, so there a waiting process may not read it: the message then says
"PID unknown" rather than failing.
"""

from __future__ import annotations

import os
from pathlib import Path


def _portalocker():
    # Imported when a lock is taken, not with posttrain: commands that take none (check, --help) then
    # load no locking code at all.
    import portalocker

    return portalocker


class FileLock:
    """`with FileLock(path): ...` blocks until the lock is free; `try_acquire()` does not wait."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = None

    def _open(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return open(self.path, "a+")  # noqa: SIM115 - held open as long as the lock is

    def try_acquire(self) -> bool:
        pl = _portalocker()
        fh = self._open()
        try:
            pl.lock(fh, pl.LOCK_EX | pl.LOCK_NB)
        except pl.LockException:
            fh.close()
            return False
        self._fh = fh
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        return True

    def acquire(self) -> FileLock:
        pl = _portalocker()
        fh = self._open()
        pl.lock(fh, pl.LOCK_EX)
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            _portalocker().unlock(self._fh)
            self._fh.close()
            self._fh = None

    def holder(self) -> str:
        """The PID written by the process that holds the lock, or '?'."""
        try:
            return self.path.read_text(errors="replace").strip() or "?"
        except OSError:  # Windows: the holder's byte range is locked
            return "?"

    @staticmethod
    def held(path: str | Path) -> bool:
        """Whether a live process holds the lock at `path` now (without waiting)."""
        if not Path(path).exists():
            return False
        probe = FileLock(path)
        if probe.try_acquire():
            probe.release()
            return False
        return True

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
