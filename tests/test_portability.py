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
POSIX_ONLY_MODULES = {"fcntl", "termios", "tty", "pty", "pwd", "grp", "resource", "posix", "syslog", "crypt"}
POSIX_ONLY_CALLS = {"sched_getaffinity", "sched_setaffinity", "killpg", "setsid", "fork", "getpgid", "pread",
                    "pwrite", "fchmod", "fchown", "getuid", "geteuid"}
PLATFORM_CHECKS = ("sys.platform", "os.name", "hasattr(os", "platform.system")


def _guarded(source: str, node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a function (or if-block) whose text checks the platform."""
    current = parents.get(node)
    while current is not None:
        if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.If)):
            text = ast.get_source_segment(source, current) or ""
            if any(check in text for check in PLATFORM_CHECKS):
                return True
        current = parents.get(current)
    return False


def test_no_posix_only_import_or_call_outside_a_platform_check():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names if a.name.split(".")[0] in POSIX_ONLY_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in POSIX_ONLY_MODULES:
                names = [node.module]
            elif isinstance(node, ast.Attribute) and node.attr in POSIX_ONLY_CALLS and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                names = [f"os.{node.attr}"]
            if names and not _guarded(source, node, parents):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: {', '.join(names)}")
    assert offenders == []


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
        from posttrain import _native
        from posttrain._locks import FileLock
        assert _native.cpu_threads() >= 1
        a, b = FileLock({str(tmp_path / "x.lock")!r}), FileLock({str(tmp_path / "x.lock")!r})
        assert a.try_acquire() and not b.try_acquire() and FileLock.held(a.path)
        a.release()
        assert b.try_acquire()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
