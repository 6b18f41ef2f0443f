"""Marks for tests that exercise what only some operating systems have.

A test that sends SIGKILL, SIGSTOP, uses process groups or sessions checks POSIX behaviour; on
Windows it is skipped, and the Windows behaviour it stands for is tested with Windows' semantics
(test_windows_semantics.py) and on the Windows CI job.
"""

from __future__ import annotations

import sys

import pytest

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, sessions or process groups")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="Linux only (prctl, /proc, inotify or Debian packages)")


def kill_tree(pid: int) -> None:
    """`kill -9` of a process and everything it started, on any OS (psutil: SIGKILL on POSIX,
    TerminateProcess on Windows), children first so none is re-parented and missed."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
