"""Log-probabilities from llama.cpp's logits rows: the one conversion the conversion check and ship's
KL divergence both use, so both compare numbers computed the same way."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Natural-log probabilities, in float64, row by row (one float64 copy of `logits`, then in place)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x
