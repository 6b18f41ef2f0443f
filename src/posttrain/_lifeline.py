"""A child process that must not outlive the posttrain process that started it.

Two guards, because either alone has a gap:
- Linux's parent-death signal (`PR_SET_PDEATHSIG`) fires at once, but follows the *thread* that
  spawned the child, so it is only asked for when that thread lives as long as the child (the
  spawner says so);
- a thread polls the parent (by PID and start time, through psutil, on every OS) and ends this
  process within a fraction of a second once the parent is gone, however it died. On macOS and
  Windows this is the only guard.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

POLL_S = 0.2
PR_SET_PDEATHSIG = 1


def detached_kwargs() -> dict:
    """`subprocess.Popen` arguments for a child that must not get the terminal's Ctrl-C and may
    outlive this process's session: a new session on POSIX, a detached new process group on Windows."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _set_pdeathsig(sig: int) -> None:
    if not sys.platform.startswith("linux"):
        return  # no such call elsewhere; the polling thread covers those systems
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # an unusual libc: the polling thread still applies


def _parent_alive(parent) -> bool:
    import psutil

    try:
        return parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def die_with_parent(parent_pid: int, *, pdeathsig: bool = True,
                    on_orphan: Callable[[], None] | None = None) -> bool:
    """Arrange for this process to end when `parent_pid` does. False when the parent is already gone.

    `on_orphan` runs first when the parent disappears (e.g. ask a server to shut down gracefully);
    the process then exits with status 1 regardless.
    """
    import psutil

    try:
        parent = psutil.Process(parent_pid)  # remembers the start time: a recycled PID is not our parent
    except psutil.Error:
        return False
    if pdeathsig:
        _set_pdeathsig(signal.SIGTERM if on_orphan is not None else signal.SIGKILL)
    if not _parent_alive(parent):
        return False

    def watch() -> None:
        while _parent_alive(parent):
            time.sleep(POLL_S)
        if on_orphan is not None:
            try:
                on_orphan()
            except Exception:  # noqa: BLE001 - we are exiting either way
                pass
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
    return True
