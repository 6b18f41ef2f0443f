"""posttrain must start on Windows and macOS (issue 15). CI runs Linux only, so these check what can be
checked here: no POSIX-only module or call outside a platform check, and the CLI importing and
working with the POSIX-only modules taken away. What stays unverified: a real Windows run."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import posttrain

SRC = Path(posttrain.__file__).parent
TESTS = Path(__file__).parent
# The layer that makes Windows' semantics on Linux (windows_site/, windows_semantics.py) is Linux-only
# by purpose: it takes POSIX away from the processes it starts, so it must touch it.
LINUX_ONLY_TEST_HELPERS = {"windows_semantics.py", "windows_site"}
POSIX_ONLY_MODULES = {"fcntl", "termios", "tty", "pty", "pwd", "grp", "resource", "posix", "syslog", "crypt"}
POSIX_ONLY_CALLS = {"sched_getaffinity", "sched_setaffinity", "killpg", "setsid", "fork", "getpgid", "pread",
                    "pwrite", "fchmod", "fchown", "getuid", "geteuid", "getsid", "setpgid", "getpgrp", "getloadavg"}
# Windows' signal module has SIGABRT, SIGFPE, SIGILL, SIGINT, SIGSEGV, SIGTERM, SIGBREAK and no others;
# `signal.SIGKILL` evaluated in a child's start-up ended every posttrain child there (issue 28).
POSIX_ONLY_SIGNAL_NAMES = {"SIGKILL", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGSTOP", "SIGCONT", "SIGQUIT", "SIGALRM",
                           "SIGCHLD", "SIGPIPE", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGWINCH", "SIGBUS", "SIGTRAP",
                           "pthread_kill", "pthread_sigmask", "alarm", "setitimer", "siginterrupt", "pause", "sigwait"}
# Popen arguments Windows refuses (preexec_fn: ValueError) or ignores (start_new_session).
POSIX_ONLY_KEYWORDS = {"preexec_fn", "start_new_session", "process_group"}
PLATFORM_CHECKS = ("sys.platform", "os.name", "hasattr(os", "platform.system", "posix_only")


def _guarded(source: str, node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a function (or if-block) whose text, decorators included, checks the platform, or inside
    a function of a test module marked for POSIX as a whole (`pytestmark = posix_only`). A module-level
    import is never guarded by a mark: on Windows it fails at collection, before any skip."""
    current = parents.get(node)
    in_function = False
    while current is not None:
        in_function = in_function or isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef))
        if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.If, ast.IfExp)):
            text = ast.get_source_segment(source, current) or ""
            decorators = [ast.get_source_segment(source, d) or "" for d in getattr(current, "decorator_list", [])]
            if any(check in t for t in (text, *decorators) for check in PLATFORM_CHECKS):
                return True
        if isinstance(current, ast.Module) and in_function:
            marks = [ast.get_source_segment(source, n) or "" for n in current.body
                     if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)]
            if any(check in m for m in marks for check in PLATFORM_CHECKS):
                return True
        current = parents.get(current)
    return False


def _posix_only_uses(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """Every import, call, signal name, Popen argument and /tmp path that exists on POSIX only."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, a.name) for a in node.names if a.name.split(".")[0] in POSIX_ONLY_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in POSIX_ONLY_MODULES:
            found.append((node, node.module))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "os" and node.attr in POSIX_ONLY_CALLS:
                found.append((node, f"os.{node.attr}"))
            elif node.value.id == "signal" and node.attr in POSIX_ONLY_SIGNAL_NAMES:
                found.append((node, f"signal.{node.attr}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "send_signal":
            found.append((node, "send_signal (TerminateProcess on Windows: no handler runs)"))
        elif isinstance(node, ast.keyword) and node.arg in POSIX_ONLY_KEYWORDS:
            found.append((node, f"{node.arg}="))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                (node.value == "/tmp" or node.value.startswith("/tmp/")):
            found.append((node, repr(node.value)))
    return found


def _offenders(root: Path, skip: set[str] = frozenset()) -> list[str]:
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node, what in _posix_only_uses(tree):
            if not _guarded(source, node, parents):
                offenders.append(f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}: {what}")
    return offenders


def test_no_posix_only_import_or_call_outside_a_platform_check():
    assert _offenders(SRC) == []


def test_the_tests_use_nothing_posix_only_outside_a_platform_check():
    # `setup.ps1 -Test` then pytest on Windows: a test that sends SIGKILL or starts a new session is
    # marked posix_only (tests/platforms.py) or checks the platform itself.
    assert _offenders(TESTS, LINUX_ONLY_TEST_HELPERS) == []


def test_the_check_sees_what_slipped_through_before():
    # The check itself, on the lines that ended every child on Windows and broke the test suite there.
    source = textwrap.dedent("""
        import signal, subprocess
        def die_with_parent():
            _set_pdeathsig(signal.SIGTERM if x else signal.SIGKILL)
        def start():
            subprocess.Popen(cmd, preexec_fn=wire_fds, start_new_session=True)
            tempfile.mkdtemp(dir="/tmp")
    """)
    found = sorted(what for _, what in _posix_only_uses(ast.parse(source)))
    assert found == ["'/tmp'", "preexec_fn=", "signal.SIGKILL", "start_new_session="]


def test_the_cli_works_without_posix_only_modules(tmp_path):
    # As on Windows: fcntl and friends cannot be imported, os has no sched_getaffinity.
    from posttrain.tiny import make_tiny

    ckpt = make_tiny(tmp_path / "tiny")
    code = textwrap.dedent(f"""
        import os, sys
        for name in ("fcntl", "termios", "resource"):  # not posix itself: the standard library needs it
            sys.modules[name] = None  # `import fcntl` now raises ImportError
        for name in ("sched_getaffinity", "killpg", "setsid", "fork"):
            if hasattr(os, name):
                delattr(os, name)
        sys.argv = ["posttrain", "check", {str(ckpt)!r}]
        from posttrain.cli import main
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "complete" in proc.stdout


def test_locks_and_cpu_counts_take_the_cross_platform_path(tmp_path):
    # Locks go through portalocker (flock here, LockFileEx on Windows); CPU counts through psutil.
    code = textwrap.dedent(f"""
        import os, sys
        if hasattr(os, "sched_getaffinity"):
            delattr(os, "sched_getaffinity")
        from posttrain import llamacpp
        from posttrain._locks import FileLock
        assert llamacpp.cpu_threads() >= 1
        a, b = FileLock({str(tmp_path / "x.lock")!r}), FileLock({str(tmp_path / "x.lock")!r})
        assert a.try_acquire() and not b.try_acquire() and FileLock.held(a.path)
        a.release()
        assert b.try_acquire()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def _starts_a_child(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
        isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess" and \
        node.func.attr in ("run", "Popen", "call", "check_call", "check_output")


def test_every_child_process_is_started_without_a_console_window():
    # On Windows a console program started by a parent without a visible console (the detached
    # watcher, Task Scheduler) opens a window of its own; closing it kills the step. Every child goes
    # through _lifeline's no_window_kwargs() (or detached_kwargs(), a hidden console of its own).
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if not _starts_a_child(node):
                continue
            spread = [ast.get_source_segment(source, k.value) or "" for k in node.keywords if k.arg is None]
            named = [k.arg for k in node.keywords if k.arg is not None]
            if not any(s in ("no_window_kwargs()", "detached_kwargs()", "kw") for s in spread) \
                    and "creationflags" not in named:
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
