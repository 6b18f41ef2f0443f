"""lm-eval's samples of one run, as it hands them back in this process → posttrain's item records.

The task object reads the question (`doc_to_text`) and the options (`doc_to_choice`) as lm-eval
built them; what an item record is, and how much text it keeps, is `posttrain._lm_eval_items`'s,
which compare uses for samples read from files.
"""

from __future__ import annotations

from posttrain._lm_eval_items import sample_items
from posttrain.contracts import ItemRecord
from posttrain.evaluate._measured_lm import request_key


def _think_sha256(sample: dict, think: dict[str, str]) -> str | None:
    """The hash of the reasoning cut out of this generation, found by the request it answered."""
    args = sample.get("arguments")
    if isinstance(args, dict):  # lm-eval logs {"gen_args_0": {"arg_0": context, "arg_1": kwargs}}
        first = next(iter(args.values()), {})
        return think.get(request_key((first.get("arg_0"), first.get("arg_1"))))
    if isinstance(args, list) and args:
        return think.get(request_key(tuple(args[0])))
    return None


def items_from_samples(leaf: str, task, samples: list[dict], *, group: str | None,
                       think: dict[str, str]) -> list[ItemRecord]:
    metric_names = [m["metric"] for m in task.config.metric_list or []] or list(task._metric_fn_list)
    multiple_choice = task.config.output_type == "multiple_choice"
    records = []
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
            choice_ll = tuple(float(r[0]) for r in s["filtered_resps"])
            response = choices[max(range(len(choice_ll)), key=choice_ll.__getitem__)] if choice_ll else None
            gold = task.doc_to_target(doc)
            if isinstance(gold, int) and 0 <= gold < len(choices):
                target = choices[gold]
        else:
            if isinstance(response, list):
                response = response[0] if response else None
            think_sha = _think_sha256(s, think)
        cluster = leaf if group else (doc.get("activity_label") if isinstance(doc, dict) else None)
        records += sample_items(s, f"{leaf} doc {s.get('doc_id')}", task=leaf, group=group, question=question,
                                answers=lambda _metric, t=target, r=response: (t, r), cluster=cluster,
                                metrics=metric_names, choice_ll=choice_ll, think_sha256=think_sha)
    return records
