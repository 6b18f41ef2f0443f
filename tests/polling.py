"""Waiting for something another process or thread does, without fixed sleeps."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
