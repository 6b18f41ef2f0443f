"""The series document from the gathered checkpoints: each checkpoint's scores with CIs, each paired
with the previous one and with the final one (the compare package's paired tests, Holm over the
whole series), and the best checkpoint in one sentence."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from posttrain._ci import mean_interval
from posttrain._numbers import fmt_p
from posttrain.compare import LOWER_IS_BETTER, compare_family
from posttrain.series._gather import Gathered, Member
from posttrain.series._model import Best, Pairing, Point, Score, SeriesDoc

# The metric a task is judged on when it reports several (hellaswag: acc and acc_norm): the first
# of these it has, else the first by name.
MAIN_METRICS = ("acc", "exact_match", "f1", "mc2")


def _scores(items, alpha: float) -> list[Score]:
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for it in items:  # reported like compare reports: a group's leaf tasks together
        groups[(it.group or it.task, it.filter, it.metric)].append(it.value)
    out = []
    for (task, flt, metric), values in sorted(groups.items()):
        s = mean_interval(values, alpha)
        out.append(Score(task=task, metric=metric, filter=flt, mean=s["mean"], ci=s["ci"], n=len(values)))
    return out


def main_metrics(points: list[Point]) -> dict[str, tuple[str, str]]:
    """task → (metric, filter) that decides "best" for it, among those every checkpoint has."""
    common = set.intersection(*({(s.task, s.metric, s.filter) for s in p.scores if s.mean is not None}
                                for p in points)) if points else set()
    by_task: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for task, metric, flt in common:
        by_task[task].append((metric, flt))
    out = {}
    for task, options in sorted(by_task.items()):
        rank = {m: i for i, m in enumerate(MAIN_METRICS)}
        out[task] = min(options, key=lambda o: (rank.get(o[0], len(rank)), o[1] != "none", o))
    return out


def _value(point: Point, task: str, key: tuple[str, str]) -> float:
    s = next(s for s in point.scores if (s.task, s.metric, s.filter) == (task, *key))
    return -s.mean if key[0] in LOWER_IS_BETTER else s.mean


def _flip(c: dict) -> dict:
    """A comparison read from the other side: the same test, the difference negated."""
    ci = c["diff"]["ci"]
    verdict = {"better": "worse", "worse": "better"}.get(c["verdict"], c["verdict"])
    return {**c, "new_label": c["baseline_label"], "baseline_label": c["new_label"], "verdict": verdict,
            "diff": {**c["diff"], "mean": -c["diff"]["mean"] if c["diff"]["mean"] is not None else None,
                     "ci": [-ci[1], -ci[0]] if ci and None not in ci else ci}}


def _pairing(kind: str, c: dict) -> Pairing:
    return Pairing(kind=kind, label=c["new_label"], versus=c["baseline_label"], task=c["task"], metric=c["metric"],
                   filter=c["filter"], n=c["n"], diff=c["diff"]["mean"], ci=c["diff"]["ci"],
                   test=(c.get("test") or {}).get("name"), p_value=c["p_value"], p_adjusted=c["p_adjusted"],
                   verdict=c["verdict"], sentence=c["sentence"])


def _pairings(members: list[Member], alpha: float, seed: int) -> list[Pairing]:
    """Each checkpoint against the one before it and against the final one. The last checkpoint's
    "final" pairing is the final's "previous" one seen from the other side: tested once, so Holm
    counts every distinct pair once."""
    if len(members) < 2:
        return []
    final = members[-1]
    wanted: list[tuple[str, Member, Member]] = []  # (kind, label, versus)
    for i, m in enumerate(members):
        if i:
            wanted.append(("previous", m, members[i - 1]))
        if m is not final:
            wanted.append(("final", m, final))
    tested: dict[tuple[str, str], None] = {}
    for _, a, b in wanted:
        if (b.label, a.label) not in tested:
            tested[(a.label, b.label)] = None
    by_label = {m.label: m for m in members}
    doc = compare_family([(a, by_label[a].items, b, by_label[b].items) for a, b in tested], alpha=alpha, seed=seed,
                         sources={m.label: m.eval_label for m in members})
    found: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in doc["comparisons"]:
        found[(c["new_label"], c["baseline_label"])].append(c)
        found[(c["baseline_label"], c["new_label"])].append(_flip(c))
    return [_pairing(kind, c) for kind, a, b in wanted for c in found[(a.label, b.label)]]


def _num(x: float | None, proportion: bool) -> str:
    if x is None:
        return "—"
    return f"{x * 100:.1f}%" if proportion else f"{x:.3g}"


def _best(points: list[Point], pairings: list[Pairing]) -> Best | None:
    if not points:
        return None
    metrics = main_metrics(points)
    if len(points) == 1 or not metrics:
        only = points[-1]
        sentence = f"the best checkpoint is {only.label} (the only one evaluated so far: no paired test yet)."
        return Best(label=only.label, step=only.step, versus=None, sentence=sentence)
    # Ties go to the later checkpoint: nothing speaks for stopping earlier.
    ranked = sorted(range(len(points)), key=lambda i: (sum(_value(points[i], t, k) for t, k in metrics.items()), i))
    best, final = points[ranked[-1]], points[-1]
    versus = final if best is not final else points[ranked[-2]]
    p_adj: dict[str, float | None] = {}
    parts = []
    for task, (metric, flt) in metrics.items():
        pairing = next((p for p in pairings if {p.label, p.versus} == {best.label, versus.label}
                        and (p.task, p.metric, p.filter) == (task, metric, flt)), None)
        p_adj[task] = pairing.p_adjusted if pairing else None
        scores = [next(s for s in pt.scores if (s.task, s.metric, s.filter) == (task, metric, flt))
                  for pt in (best, versus)]
        proportion = all(s.mean is None or 0 <= s.mean <= 1 for s in scores)
        what = task if metric == "acc" else f"{task} {metric}"
        verdict = "" if pairing is None else (
            ", significant" if pairing.verdict != "no significant difference" else ", not significant")
        parts.append(f"{what} {_num(scores[0].mean, proportion)} vs {_num(scores[1].mean, proportion)}, "
                     f"paired p = {fmt_p(p_adj[task])}{verdict}")
    step = f"step {best.step}" if best.step is not None else "the last step" if best is final else "step unknown"
    role = "the final model" if versus is final else f"the runner-up {versus.label}"
    sentence = (f"the best checkpoint is {best.label} ({step}; against {role}: {'; '.join(parts)}; "
                "Holm-adjusted over the series).")
    return Best(label=best.label, step=best.step, versus=versus.label, p_adjusted=p_adj, sentence=sentence)


def build_series(gathered: Gathered, folder: str, *, alpha: float = 0.05, seed: int = 0) -> SeriesDoc:
    members = gathered.members
    points = [Point(label=m.label, path=str(m.path), step=m.step, run_id=m.run_id, eval_label=m.eval_label,
                    scores=_scores(m.items, alpha)) for m in members]
    pairings = _pairings(members, alpha, seed)
    return SeriesDoc(created_at=datetime.now(UTC).isoformat(timespec="seconds"), folder=folder,
                     quant=gathered.quant, alpha=alpha, final=points[-1].label if points else None, points=points,
                     pairings=pairings, best=_best(points, pairings), pending=gathered.pending)
