"""Evaluate models with lm-evaluation-harness: offline task data, paired subsets, per-item storage, cache.

Importing this package registers posttrain's lm-eval models: `posttrain-llamacpp` (a GGUF in-process
through llama-cpp-python) and `posttrain-ollama` (generation through Ollama's API).
"""

from __future__ import annotations

from posttrain.evaluate._backends import ModelRef, OllamaLM, resolve_model
from posttrain.evaluate._results import EvalResult, MetricValue, items_for_eval
from posttrain.evaluate._runner import evaluate, evaluate_request
from posttrain.evaluate._task_plan import DEFAULT_TASKS, EvalRequest
from posttrain.evaluate._selection import Selection, select
from posttrain.evaluate._shards import ShardedEvaluation, sharded
from posttrain.evaluate._tasks import check_task_names, offline_family
from posttrain._thinking import DEFAULT_THINK_PATTERNS, strip_think

# The in-process llama.cpp backend registers itself with lm-eval on import.
from posttrain.evaluate import _llamacpp_lm  # noqa: E402,F401

__all__ = [
    "DEFAULT_TASKS",
    "DEFAULT_THINK_PATTERNS",
    "EvalRequest",
    "EvalResult",
    "MetricValue",
    "ModelRef",
    "OllamaLM",
    "Selection",
    "ShardedEvaluation",
    "check_task_names",
    "evaluate",
    "evaluate_request",
    "items_for_eval",
    "offline_family",
    "resolve_model",
    "select",
    "sharded",
    "strip_think",
]
