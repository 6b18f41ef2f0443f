"""llama.cpp's quantizer, run in child processes, several variants side by side.

Why children: the quantizer is native code. A crash there (an instruction another CPU lacks, a bug
for one type) ends one child, which posttrain names, instead of the conversion and everything it
had made. Why side by side: one quantization leaves cores idle while it reads, converts and writes
each tensor on one thread, so a ladder quantized one type after another (as by hand) wastes them;
two at a time on 2 cores made six SmolLM2-135M variants in 14.6 s instead of 16.0 s. The slowest
types (IQ, which search for their scales) start first, so that the last one to finish is short.

The children start before the converter makes F16: their start-up (Python, llama.cpp) then runs
on the core the single-threaded converter leaves idle. Each child takes one job at a time over a
line protocol on its stdin/stdout (`_quantizer_child.py`); llama.cpp's messages go to the job's log.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path

from posttrain import llamacpp
from posttrain._files import sha256_file
from posttrain.convert._quant_types import NEEDS_IMATRIX, quantizer_types
from posttrain.errors import PosttrainError
from posttrain.toolchain import ConverterTree
from posttrain._lifeline import no_window_kwargs

_CHILD = "posttrain.convert._quantizer_child"
# What one quantization holds besides the process itself: a tensor's F16 bytes, its float32 copy and
# the quantized output (llama.cpp's llama_model_quantize_impl), per element of the largest tensor.
_BYTES_PER_ELEMENT = 12
_PROCESS_BYTES = 512 * 2**20


def imatrix_tools(tree: ConverterTree):
    """llama.cpp's tools for quantizing with an importance matrix: the user's own build when their
    checkout has one (`build/bin`), else posttrain's build from the runtime's sdist (made once, cached).
    Either way checked against the runtime's llama.cpp version."""
    from posttrain.llamacpp import QUANTIZE, find_llama_tools

    user_bin = tree.root / "build" / "bin"
    if tree.source == "user" and (user_bin / QUANTIZE).is_file():
        return find_llama_tools(user_bin)
    return find_llama_tools()


def run_quantizer(tree: ConverterTree, src: Path, dest: Path, quant: str, imatrix: Path | None, log: Path,
                  nthread: int | None = None) -> None:
    """`src` (F16) → `dest` of type `quant`, llama.cpp's messages in `log`; PosttrainError on failure."""
    if imatrix is not None:
        # The Python binding cannot pass an importance matrix (a C++ map); llama.cpp's own binary can.
        from posttrain.convert._imatrix import quantize_with_imatrix

        quantize_with_imatrix(imatrix_tools(tree), src, dest, quant, imatrix, log)
        return
    from posttrain.llamacpp import stderr_to

    llama_cpp = llamacpp.load_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quantizer_types()[quant]
    params.nthread = nthread or llamacpp.cpu_threads()
    log.write_text("")
    with stderr_to(log):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params))
    if rc != 0:
        remedy = (f"{quant} needs an importance matrix: pass --imatrix FILE" if quant in NEEDS_IMATRIX
                  else f"see {log}")
        raise PosttrainError(f"llama.cpp's quantizer failed to make {quant}", remedy=remedy)


def quantize_checked(tree: ConverterTree, src: Path, partial: Path, quant: str, imatrix: Path | None,
                     log: Path) -> dict:
    """Quantize, then check that the header reads back and the file loads in llama.cpp; the file's
    sha256, size, header and the seconds it all took. The file is removed on any failure."""
    from posttrain.convert import _verify
    from posttrain.convert._gguf_info import read_header

    started = time.perf_counter()
    try:
        run_quantizer(tree, src, partial, quant, imatrix, log)
        header = read_header(partial, tree, intended=quant)
        if header.tensor_count == 0:
            raise PosttrainError(f"{quant}: the written GGUF holds no tensors")
        _verify.load_check(partial)
        return {"sha256": sha256_file(partial), "size": partial.stat().st_size, "header": header.to_json(),
                "seconds": time.perf_counter() - started}
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def slots_for(n_jobs: int, largest_tensor: int) -> int:
    """How many quantizations run at once: one per job, at most one per CPU, and as many as memory holds."""
    import psutil

    per_job = _BYTES_PER_ELEMENT * largest_tensor + _PROCESS_BYTES
    by_memory = psutil.virtual_memory().available // per_job
    return max(1, min(n_jobs, llamacpp.cpu_threads(), by_memory))


def longest_first(quants: list[str]) -> list[str]:
    """IQ types search for their scales and take several times as long as the others (IQ4_XS: 10 s
    where Q4_K_M takes 1.2 s on SmolLM2-135M): started first, they do not finish last, alone."""
    return sorted(quants, key=lambda q: not q.startswith("IQ"))


class QuantizerPool:
    """`slots` child processes, started now; `submit` queues jobs, each child runs one at a time."""

    def __init__(self, slots: int, tree: ConverterTree):
        self.tree = tree
        self._jobs: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._children: list[subprocess.Popen] = []
        self._threads: list[threading.Thread] = []
        self._errs: list = []
        for i in range(slots):
            child, err = self._start_child()
            self._children.append(child)
            self._errs.append(err)
            t = threading.Thread(target=self._serve, args=(child, err), daemon=True, name=f"posttrain-quantizer-{i}")
            t.start()
            self._threads.append(t)

    def _start_child(self) -> tuple[subprocess.Popen, object]:
        err = tempfile.TemporaryFile()  # the child's own failures (an import error), read only if it dies
        # The child ends with this process (PR_SET_PDEATHSIG follows the thread that started it: this one,
        # which lives until close()); stdout carries only the protocol, llama.cpp writes to the job's log.
        child = subprocess.Popen([sys.executable, "-m", _CHILD, f"--parent={os.getpid()}"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=err, text=True, encoding="utf-8",
                                 bufsize=1, **no_window_kwargs())
        return child, err

    def submit(self, quant: str, src: Path, partial: Path, imatrix: Path | None, log: Path,
               after: Future | None = None, say=None) -> Future:
        """Quantize `src` into `partial` as `quantize_checked` does, once `after` (F16 placed) succeeded.
        The future's result is quantize_checked's dict; its exception a PosttrainError."""
        future: Future = Future()
        self._jobs.put((future, {"quant": quant, "src": str(src), "dest": str(partial),
                                 "imatrix": str(imatrix) if imatrix else None, "log": str(log),
                                 "tree": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.tree).items()}},
                        after, say))
        return future

    def _serve(self, child: subprocess.Popen, err) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            future, job, after, say = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                if after is not None:
                    after.result()  # a failed F16 fails every quantization made from it, with its error
                if self._closed.is_set():
                    raise PosttrainError("the conversion was stopped before this variant was quantized")
                if say is not None:
                    say(job["quant"], "quantizing (llama.cpp quantizer)")
                future.set_result(self._ask(child, err, job))
            except BaseException as e:  # handed to whoever waits for the variant
                future.set_exception(e)

    def _ask(self, child: subprocess.Popen, err, job: dict) -> dict:
        try:
            child.stdin.write(json.dumps(job) + "\n")
            child.stdin.flush()
            line = child.stdout.readline()
        except (OSError, ValueError):  # the pipe closed: the child is gone
            line = ""
        if not line:
            if self._closed.is_set():
                raise PosttrainError(f"the conversion was stopped while {job['quant']} was being quantized")
            rc = child.wait()
            err.seek(0)
            tail = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()][-1:]
            Path(job["dest"]).unlink(missing_ok=True)
            how = llamacpp.describe_exit(rc) or f"exit status {rc}"
            raise PosttrainError(f"llama.cpp's quantizer crashed while making {job['quant']} ({how})"
                                 f"{': ' + tail[0] if tail else ''}",
                                 remedy=f"see {job['log']}; `posttrain doctor` runs llama.cpp's self-test")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise PosttrainError(reply["error"], remedy=reply.get("remedy"))
        return reply["result"]

    def close(self, now: bool = False) -> None:
        """End the children: once their jobs are done, or `now` (an error or Ctrl-C elsewhere: a
        conversion that stops does not wait for a quantization to finish)."""
        self._closed.set()
        for _ in self._threads:
            self._jobs.put(None)
        for child in self._children:
            if now:
                child.kill()
            try:
                child.stdin.close()  # a child between jobs ends at the end of its input
            except OSError:
                pass
        for child in self._children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:  # bounded: a child that hangs on exit is not waited for
                child.kill()
                child.wait()
        for t in self._threads:
            t.join(timeout=30)
        for err in self._errs:
            err.close()

    def __enter__(self) -> QuantizerPool:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(now=exc_type is not None)


