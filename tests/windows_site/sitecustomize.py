"""Windows' process semantics for a Python process on Linux, for the tests (issue 28).

posttrain is used on Windows, and this project's machines run Linux. What differs for posttrain's
own code is mostly what Windows *lacks*, and that can be taken away here. A process started with this
folder on PYTHONPATH (and TEST_AS_WINDOWS=1) imports this module before anything else, as
every Python process imports `sitecustomize`, and so do all the Python processes it starts (they
inherit the environment):

- `signal` has only what Windows' has (SIGABRT, SIGFPE, SIGILL, SIGINT, SIGSEGV, SIGTERM): no SIGKILL,
  SIGHUP, SIGUSR1, … — evaluating `signal.SIGKILL` in a child's start-up ended every child on Windows;
- `os` has no fork, setsid, killpg, getpgid, getuid, geteuid, sched_getaffinity, fchmod, pread, …;
- `subprocess.Popen` refuses `preexec_fn` (ValueError, as on Windows), ignores `start_new_session`
  and `process_group`, and its `terminate()` is a kill, as TerminateProcess is; psutil's too;
- with TEST_AS_WINDOWS_LAUNCHER=PATH, `sys.executable` is PATH: a venv's `python.exe` on
  Windows is a launcher that runs the real interpreter as its child, and the interpreter reports
  the launcher as its executable (tests/windows_semantics.py writes one).

What it cannot give: the Win32 API itself, a real console, NTFS sharing rules (tests/windows_semantics.py
has fakes for the last). Those are for the Windows job of .github/workflows/ci.yml.
"""

import os
import sys

if os.environ.get("TEST_AS_WINDOWS") == "1":
    import signal
    import subprocess

    _KILL = int(signal.SIGKILL)  # the only way left to end a process, as TerminateProcess does
    _WINDOWS_SIGNALS = {"SIGABRT", "SIGFPE", "SIGILL", "SIGINT", "SIGSEGV", "SIGTERM"}
    for _name in [n for n in dir(signal) if n.startswith("SIG") and not n.startswith("SIG_")]:
        if _name not in _WINDOWS_SIGNALS:
            delattr(signal, _name)
    for _name in ("pthread_kill", "pthread_sigmask", "sigwait", "siginterrupt", "setitimer", "getitimer",
                  "alarm", "pause", "sigpending", "sigtimedwait", "sigwaitinfo"):
        if hasattr(signal, _name):
            delattr(signal, _name)
    for _name in ("fork", "forkpty", "setsid", "setpgid", "getpgid", "getpgrp", "killpg", "getuid", "geteuid",
                  "getgid", "getegid", "sched_getaffinity", "sched_setaffinity", "fchmod", "fchown", "pread",
                  "pwrite", "getloadavg", "wait3", "wait4", "setuid", "setgid", "nice"):
        if hasattr(os, _name):
            delattr(os, _name)

    _popen_init = subprocess.Popen.__init__

    def _windows_popen_init(self, *args, **kwargs):
        if kwargs.get("preexec_fn") is not None:
            raise ValueError("preexec_fn is not supported on Windows platforms")
        kwargs.pop("start_new_session", None)  # ignored by Windows' Popen
        kwargs.pop("process_group", None)
        return _popen_init(self, *args, **kwargs)

    def _terminate_process(self):
        self.send_signal(_KILL)

    subprocess.Popen.__init__ = _windows_popen_init
    subprocess.Popen.kill = subprocess.Popen.terminate = _terminate_process

    try:
        import psutil
    except ImportError:
        pass
    else:
        def _psutil_terminate(self):
            self._send_signal(_KILL)

        psutil.Process.kill = psutil.Process.terminate = _psutil_terminate

    if launcher := os.environ.get("TEST_AS_WINDOWS_LAUNCHER"):
        sys.executable = launcher
