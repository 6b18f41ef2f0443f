"""Launcher for llama-cpp-python's server that dies with the posttrain process that started it.

`python -m posttrain.serve._child PARENT_PID [--pdeathsig] -- <llama_cpp.server args>`

Two guards, because either alone has a gap: the kernel's parent-death signal (Linux
`PR_SET_PDEATHSIG`) fires at once, but follows the *thread* that spawned us, so it is only asked for
when the spawning thread is the main thread; a watcher thread notices within a fraction of a second
that we were re-parented (the parent died, however it died) on any POSIX system.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
POLL_S = 0.2
GRACE_S = 5.0


def _set_pdeathsig() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the watcher below still applies


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    # uvicorn shuts down gracefully on SIGTERM; if it cannot, do not linger.
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    os._exit(1)


def main(argv: list[str]) -> None:
    sep = argv.index("--")
    own, server_args = argv[:sep], argv[sep + 1:]
    parent = int(own[0])
    if "--pdeathsig" in own:
        _set_pdeathsig()
    if os.getppid() != parent:  # the parent died before we got here
        sys.exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()
    sys.argv = ["llama_cpp.server", *server_args]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
