"""Which quant to ship: a ladder of GGUF variants measured on real text, speed and tasks, and a verdict."""

from posttrain.ship._child import run_child
from posttrain.ship._quality import DEFAULT_N_CTX, measure_quality, summarize
from posttrain.ship._speed import measure_speed
from posttrain.ship._text import read_text, text_from_items

__all__ = [
    "DEFAULT_N_CTX",
    "measure_quality",
    "measure_speed",
    "read_text",
    "run_child",
    "summarize",
    "text_from_items",
]
