"""Errors a user sees as one line and a non-zero exit, and errors worth retrying."""

from __future__ import annotations


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
