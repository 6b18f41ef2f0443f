"""Hooks into training frameworks: `PosttrainCallback` for transformers' Trainer.

Re-exported lazily, so `import posttrain.integrations` does not import transformers until the
callback is asked for.
"""

from __future__ import annotations

__all__ = ["Handoff", "PosttrainCallback"]


def __getattr__(name: str):
    if name in __all__:
        from posttrain.integrations import transformers as _hf

        return getattr(_hf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
