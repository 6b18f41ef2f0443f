"""The one entry point: any checkpoint folder, full weights or a PEFT adapter, looked at until it settles."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from posttrain.checkpoint._adapter import look
from posttrain.checkpoint._full import Verdict, settled


def inspect_checkpoint(path: str | Path, *, settle_seconds: float = 2.0,
                       allow_pickle: bool = False, base: str | Path | None = None) -> Verdict:
    """Decide whether `path` holds a complete checkpoint; never raises for a bad checkpoint.

    A PEFT adapter directory (adapter_config.json, no config.json) gets an `AdapterVerdict`, its base
    resolved from `base` or from adapter_config.json."""
    return settled(Path(path), partial(look, base=base, allow_pickle=allow_pickle), settle_seconds)
