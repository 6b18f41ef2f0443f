"""What a step used: the peak resident memory of a process tree, and the peak GPU memory torch saw.

The runner samples its own process and children for steps that run in it; a step in a child process
(`_isolation`) is measured by the parent while it waits, and reports its own GPU peak. Both add up a
process tree the one way `posttrain._child_process.tree_rss` does.
"""

from __future__ import annotations

import sys
import threading

import psutil

from posttrain._child_process import tree_rss


class ResourceSampler:
    """Peak RSS of this process and its children while a step runs (children: converter, servers)."""

    def __init__(self, interval: float = 0.1, enabled: bool = True):
        self.enabled = enabled
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._gpu = loaded_cuda()

    def _sample(self) -> None:
        self.peak = max(self.peak, tree_rss(psutil.Process()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ResourceSampler:
        if not self.enabled:  # the step runs in a child, which measures itself
            return self
        if self._gpu is not None:
            self._gpu.reset_peak_memory_stats()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join()
        self._sample()

    def gpu_peak(self) -> int | None:
        return int(self._gpu.max_memory_allocated()) if self._gpu is not None else None


def gpu_peak() -> int | None:
    """Peak GPU memory torch allocated in this process, when torch with CUDA is loaded here."""
    cuda = loaded_cuda()
    return int(cuda.max_memory_allocated()) if cuda is not None else None


def loaded_cuda():
    # Only if torch is already loaded by a stage: importing it just to learn there is no GPU costs seconds.
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return torch.cuda
    except Exception:  # a broken CUDA install must not fail the run; there is just no GPU figure
        pass
    return None
