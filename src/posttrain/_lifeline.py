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
import sys
import threading
import time
from collections.abc import Callable

POLL_S = 0.2
PR_SET_PDEATHSIG = 1


# Windows' process-creation flags, spelled out: `subprocess` defines them only on Windows. They are
# passed where `subprocess` is Windows' own (os.name "nt"): POSIX's Popen refuses creationflags, also
# under a test that sets sys.platform to "win32" to pick another platform's program.
_CREATE_NEW_PROCESS_GROUP = 0x00000200
_CREATE_NO_WINDOW = 0x08000000


def detached_kwargs() -> dict:
    """`subprocess.Popen` arguments for a child that must not get the terminal's Ctrl-C and may
    outlive this process's session: a new session on POSIX; on Windows a new process group with a
    console of its own that nobody sees. Not DETACHED_PROCESS: a process without any console makes
    every console program it starts (a step child, the converter, lm-eval's `git`) open a new,
    visible window; a hidden console is inherited by all of them instead."""
    if os.name == "nt":
        return {"creationflags": _CREATE_NO_WINDOW | _CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def no_window_kwargs() -> dict:
    """`subprocess` arguments for every other child (Python steps, the converter, the quantizer,
    llama.cpp's tools, git): on Windows a console program started by a parent without a console
    (the detached watcher) gets a new, visible console window, and closing that window kills the
    step. CREATE_NO_WINDOW gives it a console nobody sees. Nothing elsewhere."""
    if os.name == "nt":
        return {"creationflags": _CREATE_NO_WINDOW}
    return {}


def _set_pdeathsig(signal_name: str) -> None:
    """Ask Linux to send `signal_name` to this process when its spawning thread ends. By name, looked
    up only on Linux: Windows' `signal` module has no SIGKILL, and evaluating `signal.SIGKILL` there
    ended every child at start-up (issue 28)."""
    if not sys.platform.startswith("linux"):
        return  # no such call elsewhere; the polling thread covers those systems
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(getattr(signal, signal_name)), 0, 0, 0)
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
        _set_pdeathsig("SIGTERM" if on_orphan is not None else "SIGKILL")
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


def kill_tree(pid: int) -> None:
    """`kill -9` of a process and everything it started, on every OS (psutil: SIGKILL on POSIX,
    TerminateProcess on Windows, which has no process groups to end at once), children first so
    that none is re-parented and missed."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for proc in family:
        try:
            proc.kill()
        except psutil.Error:
            pass
