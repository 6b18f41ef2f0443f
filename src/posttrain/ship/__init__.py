"""Which quant to ship: a ladder of GGUF variants measured on real text, speed and tasks, and a verdict."""

from posttrain.ship._child import run_child
from posttrain.ship._document import SHIP_JSON, read_ship, write_ship
from posttrain.ship._ladder import DEFAULT_LADDER, SCHEMA, run_ladder, write_ship_reports
from posttrain.ship._quality import DEFAULT_N_CTX, measure_quality, summarize
from posttrain.ship._render import notes, plot, table
from posttrain.ship._speed import measure_speed
from posttrain.ship._text import read_text, text_from_items
from posttrain.ship._tost import items_needed, smallest_margin, tost, tost_power
from posttrain.ship._verdict import DEFAULT_MARGIN_POINTS, DEFAULT_MAX_KLD, Rung, decide

__all__ = [
    "DEFAULT_LADDER",
    "SCHEMA",
    "SHIP_JSON",
    "read_ship",
    "write_ship",
    "run_ladder",
    "write_ship_reports",
    "DEFAULT_MARGIN_POINTS",
    "DEFAULT_MAX_KLD",
    "DEFAULT_N_CTX",
    "Rung",
    "decide",
    "items_needed",
    "measure_quality",
    "measure_speed",
    "notes",
    "plot",
    "read_text",
    "run_child",
    "smallest_margin",
    "summarize",
    "table",
    "text_from_items",
    "tost",
    "tost_power",
]
