"""lm-eval's logged samples → posttrain's item rows (the `items` table): one row per (leaf task, doc,
filter, metric), with a short plain-text question, the gold and the model's answer for the report."""

from __future__ import annotations

import json

from posttrain.evaluate._measured_lm import request_key
from posttrain.evaluate._selection import Selection

QUESTION_CHARS = 400
TEXT_CHARS = 2000


def _short(text, limit: int) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def items_from_samples(leaf: str, task, samples: list[dict], *, group: str | None, selection: Selection,
                        think: dict[str, str]) -> list[dict]:
    metric_names = [m["metric"] for m in task.config.metric_list or []] or list(task._metric_fn_list)
    multiple_choice = task.config.output_type == "multiple_choice"
    rows = []
    for s in samples:
        doc = s["doc"]
        try:
            question = task.doc_to_text(doc)
        except Exception:  # noqa: BLE001 - a display string only
            question = None
        if not isinstance(question, str):
            question = doc.get("question") if isinstance(doc, dict) else None
        choice_ll = None
        target = s.get("target")
        response = s.get("filtered_resps")
        think_sha = None
        if multiple_choice:
            choices = task.doc_to_choice(doc)
            lls = [float(r[0]) for r in s["filtered_resps"]]
            choice_ll = json.dumps(lls)
            response = choices[max(range(len(lls)), key=lls.__getitem__)] if lls else None
            gold = task.doc_to_target(doc)
            if isinstance(gold, int) and 0 <= gold < len(choices):
                target = choices[gold]
        else:
            if isinstance(response, list):
                response = response[0] if response else None
            args = s.get("arguments")
            if isinstance(args, dict):  # lm-eval logs {"gen_args_0": {"arg_0": context, "arg_1": kwargs}}
                first = next(iter(args.values()), {})
                think_sha = think.get(request_key((first.get("arg_0"), first.get("arg_1"))))
            elif isinstance(args, list) and args:
                think_sha = think.get(request_key(tuple(args[0])))
        cluster = leaf if group else (doc.get("activity_label") if isinstance(doc, dict) else None)
        for metric in metric_names:
            if metric not in s:
                continue
            value = s[metric]
            rows.append({
                "task": leaf, "task_group": group,
                "doc_id": int(s["doc_id"]),  # lm-eval logs the original index
                "doc_hash": s.get("doc_hash"), "filter": s.get("filter", "none"), "metric": metric,
                "value": float(value) if isinstance(value, int | float | bool) else None,
                "choice_ll_json": choice_ll, "question": _short(question, QUESTION_CHARS),
                "target": _short(target, TEXT_CHARS), "response": _short(response, TEXT_CHARS),
                "cluster": cluster, "think_sha256": think_sha,
            })
    return rows
