"""Errors a user sees as one line and a non-zero exit, and errors worth retrying."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class PosttrainError(Exception):
    """A problem with the user's input or environment: shown as one line, exit code non-zero.

    `remedy` is the thing to do about it, printed after the cause.
    """

    exit_code = 1

    def __init__(self, message: str, remedy: str | None = None):
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def one_line(self) -> str:
        text = self.message.strip().replace("\n", " ")
        return f"{text} — {self.remedy}" if self.remedy else text


class TransientError(PosttrainError):
    """A fault that may pass on its own (a busy server, a dropped connection): retried with backoff."""


class Interrupted(PosttrainError):
    """Work stopped because a stop was asked for (`posttrain stop`, SIGTERM), not because it failed:
    the runner records the step as interrupted and a rerun of the same command resumes it."""


class CheckpointIncomplete(PosttrainError):
    """The checkpoint directory is not (yet) a complete Hugging Face checkpoint."""


class NativeCrash(PosttrainError):
    """A child process was killed by a signal (or, on Windows, a native fault): a crash in native
    code (llama.cpp, torch), which leaves no Python exception behind. Raised by whoever watched the
    child (a pipeline step's supervisor, ship's measuring children)."""

    def __init__(self, step: str, how: str, log_path: Path):
        super().__init__(f"{step} crashed ({how}); log: {log_path}",
                         remedy="`posttrain doctor` runs llama.cpp's self-test on this machine")
        self.step = step
        self.how = how
        self.log_path = log_path
