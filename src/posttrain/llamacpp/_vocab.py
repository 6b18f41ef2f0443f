"""A GGUF's vocabulary, opened without its weights: for the header, the special tokens and counting
a text's tokens as llama.cpp's own tools will. Milliseconds, whatever the model's size."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from posttrain.errors import PosttrainError
from posttrain.llamacpp._loading import load_llama_cpp


@contextmanager
def open_vocab(path: Path) -> Iterator[Any]:
    """`llama_cpp.Llama` with the vocabulary only, closed on exit; a file llama.cpp cannot read is one line."""
    from llama_cpp._utils import suppress_stdout_stderr

    Llama = load_llama_cpp().Llama
    try:
        # llama.cpp prints context warnings from C even with verbose=False; keep the CLI's output clean.
        with suppress_stdout_stderr(disable=False):
            model = Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise PosttrainError(f"{path} is not a GGUF file llama.cpp can read: {e}",
                             remedy="re-run `posttrain convert`") from None
    try:
        yield model
    finally:
        model.close()


def count_tokens(path: Path, text: str) -> int:
    """How many tokens `text` is for the model at `path`, with the BOS its vocabulary adds: what
    `llama-imatrix` and `llama-perplexity` count before they split a text into chunks."""
    with open_vocab(path) as model:
        return len(model.tokenize(text.encode("utf-8", errors="replace"), add_bos=True, special=False))
