"""Compare two models' per-item evaluation results with paired statistics.

Pairs items on (task, doc_hash, filter, metric); reports per model means with CIs, the paired
difference with naive and clustered SEs, McNemar / paired t / paired bootstrap, Holm-adjusted
p-values across the whole family, the minimum detectable effect, and one sentence per comparison.
"""

from posttrain.compare._compare import (
    LOWER_IS_BETTER,
    SCHEMA,
    compare_family,
    compare_items,
    pair_items,
)
from posttrain.compare._document import read_compare, verdict_sentences
from posttrain.compare._items import ItemResult
from posttrain.compare._power import items_needed, min_detectable_effect
from posttrain.compare._render import render_table
from posttrain.compare._sources import (
    check_same_settings,
    items_for_evals,
    load_items,
    load_lm_eval_folder,
    parse_clusters,
    task_settings,
)
from posttrain.compare._stats import MIN_CLUSTERS, clustered_se, usable_clusters

__all__ = [
    "LOWER_IS_BETTER",
    "MIN_CLUSTERS",
    "SCHEMA",
    "check_same_settings",
    "clustered_se",
    "ItemResult",
    "compare_family",
    "compare_items",
    "items_for_evals",
    "items_needed",
    "load_items",
    "load_lm_eval_folder",
    "min_detectable_effect",
    "pair_items",
    "parse_clusters",
    "read_compare",
    "render_table",
    "task_settings",
    "usable_clusters",
    "verdict_sentences",
]
