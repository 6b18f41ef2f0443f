"""Realistic report inputs (numbers shaped like a real SmolLM2-135M Q4_K_M vs F16 run), shared by the
report tests. The compare document follows `posttrain.compare/1` from docs/ARCHITECTURE.md."""

from __future__ import annotations

import copy

HOSTILE_SCRIPT = "<script>alert(1)</script>"
HOSTILE_IMG = "<img src=x onerror=alert(1)>"
THINKING = "<think>the secret chain of thought 42</think>"

_COMPARE = {
    "schema": "posttrain.compare/1",
    "created_at": "2026-11-25T10:00:00+00:00",
    "alpha": 0.05,
    "correction": "holm",
    "new": {"label": "smollm2-ft-Q4_K_M", "source": "run 20261125-0930-ab12"},
    "baseline": {"label": "smollm2-base-F16", "source": "run 20261120-1100-cd34"},
    "comparisons": [
        {
            "task": "mmlu", "metric": "acc", "filter": "none",
            "new_label": "smollm2-ft-Q4_K_M", "baseline_label": "smollm2-base-F16",
            "n": 570, "n_only_new": 0, "n_only_baseline": 0, "binary": True,
            "new": {"mean": 0.2614, "se": 0.0184, "ci": [0.2271, 0.2989], "ci_method": "wilson"},
            "baseline": {"mean": 0.2789, "se": 0.0188, "ci": [0.2438, 0.3170], "ci_method": "wilson"},
            "diff": {"mean": -0.0175, "se": 0.0071, "se_naive": 0.0066, "se_clustered": 0.0071,
                     "ci": [-0.0314, -0.0036], "correlation": 0.71, "cluster_key": "subject", "n_clusters": 57},
            "test": {"name": "mcnemar_exact", "statistic": 14.0, "p_value": 0.0121, "b": 14, "c": 24},
            "bootstrap": None, "p_adjusted": 0.0363, "verdict": "worse", "mde_80": 0.0199,
            "sentence": "smollm2-ft-Q4_K_M loses 1.8 points on mmlu (95% CI 0.4–3.1), significant after Holm.",
        },
        {
            "task": "gsm8k", "metric": "exact_match", "filter": "flexible-extract",
            "new_label": "smollm2-ft-Q4_K_M", "baseline_label": "smollm2-base-F16",
            "n": 250, "n_only_new": 0, "n_only_baseline": 0, "binary": True,
            "new": {"mean": 0.048, "se": 0.0135, "ci": [0.0276, 0.0819], "ci_method": "wilson"},
            "baseline": {"mean": 0.016, "se": 0.0079, "ci": [0.0062, 0.0404], "ci_method": "wilson"},
            "diff": {"mean": 0.032, "se": 0.0128, "se_naive": 0.0128, "se_clustered": None,
                     "ci": [0.0069, 0.0571], "correlation": 0.12, "cluster_key": None, "n_clusters": None},
            "test": {"name": "mcnemar_exact", "statistic": 2.0, "p_value": 0.0129, "b": 2, "c": 10},
            "bootstrap": None, "p_adjusted": 0.0363, "verdict": "better", "mde_80": 0.031,
            "sentence": "smollm2-ft-Q4_K_M gains 3.2 points on gsm8k (95% CI 0.7–5.7), significant after Holm.",
        },
        {
            "task": "hellaswag", "metric": "acc_norm", "filter": "none",
            "new_label": "smollm2-ft-Q4_K_M", "baseline_label": "smollm2-base-F16",
            "n": 500, "n_only_new": 0, "n_only_baseline": 0, "binary": True,
            "new": {"mean": 0.412, "se": 0.022, "ci": [0.3697, 0.4556], "ci_method": "wilson"},
            "baseline": {"mean": 0.418, "se": 0.0221, "ci": [0.3755, 0.4617], "ci_method": "wilson"},
            "diff": {"mean": -0.006, "se": 0.0131, "se_naive": 0.0125, "se_clustered": 0.0131,
                     "ci": [-0.0317, 0.0197], "correlation": 0.65, "cluster_key": "activity", "n_clusters": 160},
            "test": {"name": "mcnemar_exact", "statistic": 20.0, "p_value": 0.7428, "b": 20, "c": 23},
            "bootstrap": None, "p_adjusted": 0.7428, "verdict": "no significant difference", "mde_80": 0.037,
            "sentence": "No significant difference on hellaswag: −0.6 points (95% CI −3.2 to +2.0).",
        },
    ],
    "disagreements": [
        {"task": "mmlu_anatomy", "group": "mmlu", "doc_id": 3, "doc_hash": "9f2c1e", "filter": "none",
         "metric": "acc",
         "question": "Which nerve innervates the diaphragm?\nA. vagus\nB. phrenic\nC. femoral\nD. radial",
         "target": "B", "new_response": HOSTILE_SCRIPT, "baseline_response": "B",
         "new_value": 0.0, "baseline_value": 1.0},
        {"task": "gsm8k", "group": None, "doc_id": 17, "doc_hash": "41ab07", "filter": "flexible-extract",
         "metric": "exact_match", "question": "Tom has 3 apples & buys 5 more. How many <b>apples</b>?",
         "target": "8", "new_response": THINKING + " 8", "baseline_response": HOSTILE_IMG,
         "new_value": 1.0, "baseline_value": 0.0},
        {"task": "hellaswag", "group": None, "doc_id": 120, "doc_hash": "77d0aa", "filter": "none",
         "metric": "acc_norm", "question": "A man is seen kneeling on a roof. He",
         "target": "2", "new_response": "0", "baseline_response": "2", "new_value": 0.0, "baseline_value": 1.0},
    ],
}

_VARIANTS = [
    {"quant": "F16", "path": "/data/gguf/smollm2-ft/smollm2-ft-F16.gguf",
     "sha256": "a3f1" + "0" * 60, "size_bytes": 270_898_784, "kld_vs_f16": None, "top1_vs_f16": None},
    {"quant": "Q8_0", "path": "/data/gguf/smollm2-ft/smollm2-ft-Q8_0.gguf",
     "sha256": "b7c2" + "1" * 60, "size_bytes": 144_811_104, "kld_vs_f16": 0.00041, "top1_vs_f16": 0.9921},
    {"quant": "Q4_K_M", "path": "/data/gguf/smollm2-ft/smollm2-ft-Q4_K_M.gguf",
     "sha256": "c9d3" + "2" * 60, "size_bytes": 105_472_096, "kld_vs_f16": 0.0213, "top1_vs_f16": 0.9412},
]


def _evals() -> list[dict]:
    rows = []
    scores = {  # label -> (mmlu acc, gsm8k em, hellaswag acc_norm)
        "smollm2-ft-F16": (0.2684, 0.052, 0.416),
        "smollm2-ft-Q8_0": (0.2667, 0.052, 0.414),
        "smollm2-ft-Q4_K_M": (0.2614, 0.048, 0.412),
    }
    for label, (mmlu, gsm, hs) in scores.items():
        for task, metric, flt, value, n, ci_half in (("mmlu", "acc", "none", mmlu, 570, 0.036),
                                                      ("gsm8k", "exact_match", "flexible-extract", gsm, 250, 0.027),
                                                      ("hellaswag", "acc_norm", "none", hs, 500, 0.043)):
            rows.append({"label": label, "role": "candidate", "task": task, "metric": metric, "filter": flt,
                         "value": value, "ci": [round(value - ci_half, 4), round(value + ci_half, 4)], "n": n,
                         "task_hash": f"{task}-5d41402abc4b2a76", "seconds": 41.5})
    return rows


def sample_inputs() -> dict:
    """Keyword arguments for write_report: a finished run with three variants and a verdict per task."""
    return {
        "compare": copy.deepcopy(_COMPARE),
        "run": {"id": "20261125-0930-ab12", "checkpoint": "/train/out/checkpoint-1200",
                "model_name": "smollm2-ft", "baseline": "smollm2-base-F16",
                "created_at": "2026-11-25T09:30:02+00:00", "status": "succeeded"},
        "variants": copy.deepcopy(_VARIANTS),
        "evals": _evals(),
        "steps": [
            {"name": "detect", "status": "done", "wall_s": 2.1, "peak_rss_bytes": 88_000_000, "error": None},
            {"name": "convert", "status": "done", "wall_s": 38.7, "peak_rss_bytes": 1_250_000_000, "error": None},
            {"name": "quantize", "status": "done", "wall_s": 21.4, "peak_rss_bytes": 610_000_000, "error": None},
            {"name": "evaluate", "status": "done", "wall_s": 612.9, "peak_rss_bytes": 2_100_000_000, "error": None},
            {"name": "compare", "status": "done", "wall_s": 3.2, "peak_rss_bytes": 300_000_000, "error": None},
        ],
        "environment": {"posttrain": "0.1.0", "llama.cpp": "b6000 (llama-cpp-python 0.3.36)",
                        "lm-eval": "0.4.13", "python": "3.11.9"},
        "failures": [],
    }
