"""The per-item record that evaluate produces and compare consumes; defined in `posttrain.contracts`."""

from posttrain.contracts import ItemResult

__all__ = ["ItemResult"]
