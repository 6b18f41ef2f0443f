"""A piece of posttrain run in a fresh Python child, and how it ended: the one way every isolated piece
(a pipeline step, a ship measurement, a tracker, llama.cpp's self-test) starts and watches its child.

Native code (llama.cpp, torch) that faults kills its process with no Python exception to catch; run in
a child, the parent sees the signal, names it and carries on. A tracker's libraries and hangs stay out
of the caller the same way.

`python -m MODULE ARGS... PARENT_PID`: the last argument links the child's life to this process's
(`child_args` on the child side: `posttrain._lifeline`), so no child runs on alone however the parent
ends. The child's stdout and stderr go to a log; what it answers it writes to a result file (JSON,
atomically), which its caller names among ARGS along with whatever job file it reads.

How a process ended (`describe_exit`, `was_interrupted`) is told here too, for every supervisor of a
child (`posttrain.llamacpp` hands the two names on). `import posttrain` imports this module before it
loads llama.cpp, so psutil is imported where a child is watched, not at import.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posttrain._lifeline import die_with_parent, no_window_kwargs
from posttrain._files import read_json_file
from posttrain.errors import NativeCrash, PosttrainError

if TYPE_CHECKING:
    import psutil

_POLL_S = 0.1
_TERMINATE_GRACE_S = 10.0


# How Windows reports a process killed by a native fault (NTSTATUS codes as exit codes).
_WINDOWS_FAULTS = {
    0xC0000005: "access violation",
    0xC000001D: "illegal instruction",
    0xC0000096: "privileged instruction",
    0xC00000FD: "stack overflow",
    0xC0000409: "stack buffer overrun",
    0xC0000374: "heap corruption",
}


# Windows' exit status of a console process ended by Ctrl-C or Ctrl-Break (STATUS_CONTROL_C_EXIT).
_WINDOWS_CTRL_C = 0xC000013A


def was_interrupted(returncode: int | None) -> bool:
    """Whether a child ended because the user pressed Ctrl-C: killed by SIGINT on POSIX, or
    STATUS_CONTROL_C_EXIT on Windows. That is the user's interrupt, not a crash or a failure."""
    if returncode is None:
        return False
    return returncode == -int(getattr(signal, "SIGINT", 2)) or returncode & 0xFFFFFFFF == _WINDOWS_CTRL_C


def describe_exit(returncode: int) -> str | None:
    """'SIGSEGV in native code' for a process a signal or a native fault ended; None for a normal exit."""
    if returncode & 0xFFFFFFFF == _WINDOWS_CTRL_C:  # before the signals: signed, it is negative too
        return "interrupted (Ctrl-C)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if -returncode == getattr(signal, "SIGKILL", -1):
            return f"{name}: killed, e.g. out of memory"
        return f"{name} in native code"
    fault = _WINDOWS_FAULTS.get(returncode & 0xFFFFFFFF)
    return f"{fault} in native code" if fault else None


@dataclass(frozen=True)
class Ended:
    """How a child ended: its exit status (None: stopped at its time limit), its result (None when it
    wrote none, or none was asked for), its log, and the peak RSS of its process tree (when measured)."""

    returncode: int | None
    result: dict[str, Any] | None
    log: Path
    peak_rss_bytes: int = 0

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def raise_if_crashed(self, what: str) -> None:
        """KeyboardInterrupt when Ctrl-C ended the child (the same console's: the user's, not a crash);
        NativeCrash naming the signal or native fault that killed it."""
        if self.returncode is None:
            return
        if was_interrupted(self.returncode):
            raise KeyboardInterrupt
        how = describe_exit(self.returncode)
        if how is not None:
            raise NativeCrash(what, how, self.log)

    def result_or_raise(self, what: str) -> dict[str, Any]:
        """The child's result, or the error of a child that left none: its crash, or a PosttrainError
        that quotes the log's last line (what a child that could not write its result says last)."""
        self.raise_if_crashed(what)
        if self.result is None:
            why = last_line(self.log)
            how = "was stopped at its time limit" if self.timed_out else f"exited with code {self.returncode}"
            raise PosttrainError(f"{what} {how} without a result{f' ({why})' if why else ''}; log: {self.log}")
        return self.result


def run_module(module: str, args: Sequence[str | os.PathLike], *, log: Path, result: Path | None = None,
               header: str | None = None, env: Mapping[str, str] | None = None, timeout_s: float | None = None,
               stop_event: threading.Event | None = None, stop_file: Path | None = None,
               measure_rss: bool = False) -> Ended:
    """Run `python -m MODULE ARGS... PARENT_PID` and wait while it lives (or until `timeout_s`, then it
    is killed). Its output is appended to `log`, after a `===== TIME HEADER =====` line when `header` is
    given; `env` is added to this process's environment. `result` is removed before the start and after
    it is read. Once `stop_event` is set, `stop_file` appears (a file: what a child polls on every OS)
    and the child decides whether it can end early. If the wait itself is interrupted (Ctrl-C, an
    exception in this thread), the child is stopped before the interruption goes on."""
    log.parent.mkdir(parents=True, exist_ok=True)
    for stale in (result, stop_file):  # an answer or a stop request left from an earlier child is not this one's
        if stale is not None:
            stale.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", module, *map(str, args), str(os.getpid())]
    try:
        with open(log, "ab") as sink:
            if header is not None:
                sink.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {header} =====\n".encode())
                sink.flush()
            # The thread that starts the child waits for it until it ends, so Linux's parent-death signal
            # (which follows the spawning thread) is right for the child to ask for.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                    env=None if env is None else {**os.environ, **env}, **no_window_kwargs())
        code, peak = _wait(proc, timeout_s, stop_event, stop_file, measure_rss)
    finally:
        if stop_file is not None:
            stop_file.unlink(missing_ok=True)
    answer = read_json_file(result) if result is not None and code is not None else None
    if result is not None:
        result.unlink(missing_ok=True)
    return Ended(code, answer, log, peak)


def _wait(proc: subprocess.Popen, timeout_s: float | None, stop_event: threading.Event | None,
          stop_file: Path | None, measure_rss: bool) -> tuple[int | None, int]:
    """(exit status or None when the time limit stopped it, peak RSS of its tree while it ran)."""
    import psutil

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    peak = 0
    try:
        watched = psutil.Process(proc.pid) if measure_rss else None
    except psutil.Error:
        watched = None  # already gone: nothing left to measure
    try:
        while True:
            if watched is not None:
                peak = max(peak, tree_rss(watched))
            if stop_event is not None and stop_file is not None and stop_event.is_set() and not stop_file.exists():
                stop_file.touch()
            wait_s = _POLL_S
            if deadline is not None:
                wait_s = min(wait_s, deadline - time.monotonic())
                if wait_s <= 0:
                    proc.kill()
                    proc.wait()
                    return None, peak
            try:
                return proc.wait(wait_s), peak
            except subprocess.TimeoutExpired:
                continue
    except BaseException:  # interrupted (Ctrl-C twice): the child must not run on alone
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(_TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def child_args(argv: Sequence[str]) -> list[str] | None:
    """The child side of `run_module`: end this process with the parent whose PID is the last argument;
    the other arguments, or None when that parent is already gone (the child should exit)."""
    *args, parent = argv
    return list(args) if die_with_parent(int(parent)) else None


def print_answer(work: Callable[[], dict[str, Any]]) -> int:
    """The child side of an answer in one JSON line on stdout (the self-test's children, which the
    parent reads from the log): `work()`'s dict, or `ok` false with the error; exit 0 when ok, else 1."""
    try:
        doc = work()
    except Exception as e:  # noqa: BLE001 - the parent reports it
        doc = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(doc), flush=True)
    return 0 if doc.get("ok") else 1


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of `proc` and all its descendants now (0 when it is gone)."""
    import psutil

    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in members:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass  # exited between listing and reading
    return total


def last_line(log: Path) -> str | None:
    """The last non-blank line of a child's log (cut to 500 characters): what a child that could not
    write its result says last (a full disk, the store unwritable), so its error names the cause."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:500] if lines else None
