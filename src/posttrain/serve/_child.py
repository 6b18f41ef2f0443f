"""Launcher for llama-cpp-python's server that dies with the posttrain process that started it.

`python -m posttrain.serve._child PARENT_PID [--pdeathsig] -- <llama_cpp.server args>`

`--pdeathsig` is passed only when the spawning thread is the main thread: Linux's parent-death
signal follows the thread, not the process (see `posttrain._lifeline`, which also polls the parent
on every OS). When the parent is gone the server is asked to stop (uvicorn shuts down on SIGTERM)
and, if it cannot, the process exits after a grace period.

Running this module imports `posttrain` first, which loads llama.cpp before numpy and makes every
model load skip llama.cpp's extra CPU buffer types (`posttrain.llamacpp`): the server's own
`llama_cpp.Llama` is covered by that as well.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import time

GRACE_S = 5.0


def _stop_server() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)


def main(argv: list[str]) -> None:
    from posttrain import _lifeline, llamacpp

    llamacpp.load_llama_cpp()  # already done by `import posttrain`; said here because the server depends on it
    sep = argv.index("--")
    own, server_args = argv[:sep], argv[sep + 1:]
    if not _lifeline.die_with_parent(int(own[0]), pdeathsig="--pdeathsig" in own, on_orphan=_stop_server):
        sys.exit(1)  # the parent died before we got here
    sys.argv = ["llama_cpp.server", *server_args]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
