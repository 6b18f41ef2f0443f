"""Marks for tests that exercise what only some operating systems have.

A test that sends SIGKILL, SIGSTOP, uses process groups or sessions checks POSIX behaviour; on
Windows it is skipped, and the Windows behaviour it stands for is tested with Windows' semantics
(test_windows_semantics.py) and on the Windows CI job.
"""

from __future__ import annotations

import sys

import pytest

from posttrain._lifeline import kill_tree  # noqa: F401  re-exported: kill -9 of a tree, on any OS

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, sessions or process groups")

