"""Windows, as far as posttrain's code can tell, on this Linux machine (issue 28).

- `windows_env()`: the environment for a process tree with Windows' `signal`, `os` and `subprocess`
  (see windows_site/sitecustomize.py), optionally behind a venv launcher (`write_launcher`);
- `cp932_env()`: the console a Japanese Windows gives a redirected `posttrain … > log`: code page 932
  with strict errors (facts.md: measured);
- `NtfsSharing`: a file another process holds open, so that renaming over it or reading it fails
  for a while with the errors Windows gives (ERROR_ACCESS_DENIED, ERROR_SHARING_VIOLATION);
- `ConsoleStream`: a stream bound to the console handle that fd 1 had when it was made, as Windows'
  console object is: once fd 1 is pointed elsewhere, writing to it fails (WinError 6).

None of this replaces a real Windows run: .github/workflows/ci.yml has that job.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import time
from pathlib import Path

SITE = Path(__file__).parent / "windows_site"


def windows_env(*, launcher: Path | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), env.get("PYTHONPATH", "")) if p)
    env["TEST_AS_WINDOWS"] = "1"
    if launcher is not None:
        env["TEST_AS_WINDOWS_LAUNCHER"] = str(launcher)
    return env


def write_launcher(folder: Path) -> Path:
    """An executable that behaves as a venv's `Scripts\\python.exe` does on Windows: it runs the real
    interpreter as its CHILD with the same arguments, passes its exit status on, and the child dies
    with it (Windows' launcher puts the child in a job object that is closed with the launcher)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "python-launcher"
    # -S: the launcher itself is not Python code under test; its child is.
    path.write_text(f"""#!{sys.executable} -S
import ctypes, subprocess, sys

def die_with_launcher():  # the job object of Windows' launcher, as Linux's parent-death signal
    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)

if sys.platform.startswith("linux"):
    child = subprocess.Popen([{sys.executable!r}, *sys.argv[1:]], preexec_fn=die_with_launcher)
    sys.exit(child.wait())
""", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def cp932_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PYTHONIOENCODING"] = "cp932:strict"
    env.pop("PYTHONUTF8", None)
    return env


class NtfsSharing:
    """Files held open by another process, with Windows' consequences, for code in this process:
    `os.replace` onto a held file and reading it raise PermissionError with `winerror` 32 (sharing
    violation) or 5 (access denied), until the holder lets go after `seconds`."""

    def __init__(self, monkeypatch):
        self._held: dict[str, float] = {}
        self.refused = 0
        real_replace, real_read_text = os.replace, Path.read_text
        sharing = self

        def replace(src, dst, *args, **kwargs):
            sharing._check(dst, 32)
            return real_replace(src, dst, *args, **kwargs)

        def read_text(path, *args, **kwargs):
            sharing._check(path, 5)
            return real_read_text(path, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(Path, "read_text", read_text)

    def hold(self, path: Path, seconds: float) -> None:
        self._held[os.path.abspath(path)] = time.monotonic() + seconds

    def _check(self, path, winerror: int) -> None:
        until = self._held.get(os.path.abspath(path))
        if until is not None and time.monotonic() < until:
            self.refused += 1
            error = PermissionError(13, "The process cannot access the file because it is being used by "
                                        "another process", str(path))
            error.winerror = winerror
            raise error


class ConsoleStream(io.TextIOBase):
    """sys.stdout as Windows makes it for a console: bound to the handle behind fd 1 when it was
    opened. After `os.dup2(other, 1)` that handle is closed, and every write fails."""

    def __init__(self):
        self._identity = self._fd1()
        self.written: list[str] = []

    @property
    def encoding(self) -> str:
        return "utf-8"

    @staticmethod
    def _fd1() -> tuple[int, int]:
        st = os.fstat(1)
        return st.st_dev, st.st_ino

    def write(self, text: str) -> int:
        if self._fd1() != self._identity:
            raise OSError(9, "[WinError 6] The handle is invalid")
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        if self._fd1() != self._identity:
            raise OSError(9, "[WinError 6] The handle is invalid")

