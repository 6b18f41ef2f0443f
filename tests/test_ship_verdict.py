"""The ship verdict's statistics: TOST error rates by simulation, and the answers a user reads."""

from __future__ import annotations

import numpy as np
import pytest

from posttrain.ship._tost import equivalent_rows, items_needed, smallest_margin, tost, tost_power
from posttrain.ship._verdict import Rung, decide

MARGIN = 0.05  # 5 points: the simulation needs fewer items per run than at 1 point, same logic


def _paired_diffs(rng, n: int, p_gain: float, p_loss: float, reps: int) -> np.ndarray:
    """Per-item differences of 0/1 scores: +1 with p_gain, −1 with p_loss, else 0 (reps × n)."""
    u = rng.random((reps, n))
    return np.where(u < p_gain, 1.0, np.where(u < p_gain + p_loss, -1.0, 0.0))


def test_type_one_error_at_the_margin_is_at_most_alpha():
    # True loss exactly at the margin: equivalence must be claimed in ≤ 5% of runs.
    rng = np.random.default_rng(1)
    reps, n = 4000, 400
    diffs = _paired_diffs(rng, n, 0.05, 0.10, reps)
    rate = float(np.mean(equivalent_rows(diffs, MARGIN)))
    # The vectorised path is the one `tost` takes for a single task.
    assert [tost(d, MARGIN)["equivalent"] for d in diffs[:50]] == list(equivalent_rows(diffs[:50], MARGIN))
    assert rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / reps), rate  # 5% plus Monte-Carlo slack (3 SE)
    assert rate > 0.02  # and not a test that never says yes


def test_power_matches_the_computed_power_and_items_needed():
    rng = np.random.default_rng(2)
    p_disagree = 0.10  # each direction 5%: true difference 0, SD of d = √0.10
    sd = np.sqrt(p_disagree)
    n = items_needed(sd, MARGIN)  # items for 80% power
    assert 250 < n < 450
    predicted = tost_power(sd, n, MARGIN)
    assert predicted == pytest.approx(0.8, abs=0.02)
    reps = 4000
    shown = float(np.mean(equivalent_rows(_paired_diffs(rng, n, 0.05, 0.05, reps), MARGIN)))
    assert abs(shown - predicted) < 3 * np.sqrt(predicted * (1 - predicted) / reps) + 0.02, (shown, predicted)
    # The narrowest margin n items can show is the margin that needs n items.
    assert smallest_margin(sd, n) == pytest.approx(MARGIN, rel=0.02)


def _rung(quant, size, diffs, kld=0.01, kld_se=None, speed_busy=False):
    return Rung(quant, size, bits_per_weight=size / 1e6, tg_tok_s=40.0, kld_mean=kld, kld_se=kld_se,
                diffs={task: np.asarray(d, float) for task, d in diffs.items()}, speed_busy=speed_busy)


def test_pick_is_the_smallest_equivalent_variant_and_the_sentence_says_why_not_the_next():
    rng = np.random.default_rng(3)
    n = 4000
    same = lambda: _paired_diffs(rng, n, 0.01, 0.01, 1)[0]  # noqa: E731
    loses = _paired_diffs(rng, n, 0.01, 0.04, 1)[0]  # about 3 points worse
    verdict = decide([
        _rung("Q8_0", 8_000_000, {"mmlu": same(), "hellaswag": same()}, kld=0.001),
        _rung("Q5_K_M", 5_500_000, {"mmlu": same(), "hellaswag": same()}, kld=0.02),
        _rung("Q4_K_M", 4_500_000, {"mmlu": loses, "hellaswag": same()}, kld=0.04),
    ], margin=0.01)
    assert verdict["pick"] == "Q5_K_M" and verdict["strength"] == "shown"
    s = verdict["sentence"]
    assert s.startswith("Ship Q5_K_M (5.5 bits/weight") and ", shown: it loses no more than 1 point" in s
    assert "Q4_K_M loses" in s and "on mmlu (95% CI" in s
    status = {v["quant"]: v["status"] for v in verdict["variants"]}
    assert status == {"Q4_K_M": "not equivalent", "Q5_K_M": "equivalent", "Q8_0": "equivalent"}


def test_kld_bound_keeps_a_variant_out_even_when_the_tasks_cannot_tell():
    rng = np.random.default_rng(4)
    same = lambda: _paired_diffs(rng, 4000, 0.01, 0.01, 1)[0]  # noqa: E731
    verdict = decide([_rung("Q8_0", 8_000_000, {"t": same()}, kld=0.001),
                      _rung("Q3_K_M", 3_000_000, {"t": same()}, kld=0.5)], margin=0.01, max_kld=0.1)
    assert verdict["pick"] == "Q8_0"
    assert "Q3_K_M is equivalent on the tasks but its mean KLD 0.500 exceeds 0.1" in verdict["sentence"]


def test_too_few_items_and_no_kld_evidence_keep_f16_with_strength_none_and_the_items_needed():
    rng = np.random.default_rng(5)
    # Mean KLDs above the indicated bound (0.031 at 1 point): the held-out text cannot vouch for either.
    verdict = decide([_rung("Q8_0", 8_000_000, {"hellaswag": _paired_diffs(rng, 50, 0.04, 0.04, 1)[0]}, kld=0.05,
                            kld_se=0.002),
                      _rung("Q4_K_M", 4_000_000, {"hellaswag": _paired_diffs(rng, 50, 0.06, 0.06, 1)[0]}, kld=0.2,
                            kld_se=0.01)],
                     margin=0.01)
    assert verdict["pick"] is None and verdict["strength"] == "none" and verdict["indicated"] is None
    s = verdict["sentence"]
    assert s.startswith("Ship F16, no quantized variant shown or indicated within 1 point: the tasks cannot decide")
    assert "50 items on hellaswag" in s
    needed = max(v["tasks"]["hellaswag"]["items_needed"] for v in verdict["variants"])
    assert needed > 1000 and f"about {needed:,}" in s
    assert "no mean KLD is shown under 0.031 (Q8_0: at most 0.0539)" in s
    assert all(v["status"] == "undecided" for v in verdict["variants"])


def test_identical_answers_on_few_items_do_not_prove_equivalence():
    # 20 items, no disagreement: the SD floor (one disagreement in n) keeps this from passing at 1 point.
    t = tost(np.zeros(20), 0.01)
    assert not t["equivalent"] and t["mde"] > 0.01
    # The same agreement on 5,000 items does show it.
    assert tost(np.zeros(5000), 0.01)["equivalent"]


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    from posttrain.ship._tost import holm_adjusted

    rng = np.random.default_rng(6)
    for _ in range(10):  # statsmodels collects garbage on every call: ~0.1 s each under pytest
        p = rng.random(int(rng.integers(1, 15))) ** 3
        assert np.allclose(holm_adjusted(p), multipletests(p, method="holm")[1])


def _issue_ladder(n=200, q4_loss=0.0):
    """The ladder of issue 31: 200 HellaSwag items (1 point needs ~7,700), and the held-out text measuring
    Q6_K at mean KLD 0.0028 and Q4_K_M at 0.0114, each ± 3%. Item differences with exact proportions
    (−1 on (p + loss)/2 of the items, +1 on (p − loss)/2), so no draw of luck decides what is asserted."""
    def task(p_disagree, loss=0.0):
        losses, gains = round(n * (p_disagree + loss) / 2), round(n * (p_disagree - loss) / 2)
        return np.array([-1.0] * losses + [1.0] * gains + [0.0] * (n - losses - gains))

    return [_rung("Q8_0", 8_500_000, {"hellaswag": task(0.03)}, kld=0.0009, kld_se=0.00003),
            _rung("Q6_K", 6_600_000, {"hellaswag": task(0.05)}, kld=0.0028, kld_se=0.00008),
            _rung("Q4_K_M", 4_900_000, {"hellaswag": task(0.09, q4_loss)}, kld=0.0114, kld_se=0.00034, speed_busy=True),
            _rung("Q3_K_M", 3_900_000, {"hellaswag": task(0.14)}, kld=0.05, kld_se=0.0015)]


def test_when_the_tasks_cannot_decide_the_held_out_text_indicates_the_smallest_close_variant():
    verdict = decide(_issue_ladder(), margin=0.01)
    assert verdict["pick"] == "Q4_K_M" and verdict["strength"] == "indicated"
    ind = verdict["indicated"]
    assert ind["quant"] == "Q4_K_M" and ind["kld_bound"] == 0.031 and ind["task"] == "hellaswag" and ind["n"] == 200
    assert ind["kld_upper95"] == pytest.approx(0.0114 + 1.96 * 0.00034, abs=1e-5)
    q4 = next(v for v in verdict["variants"] if v["quant"] == "Q4_K_M")
    assert ind["items_to_show"] == q4["tasks"]["hellaswag"]["items_needed"] > 2000
    s = verdict["sentence"]
    # The pick and its strength first, then the evidence, then what would make it *shown*.
    assert s.startswith("Ship Q4_K_M (4.9 bits/weight, ") and "tok/s on a busy machine), indicated, not shown:" in s
    assert "mean KLD against F16 is 0.0114, at most 0.0121 (95%), under the 0.031 of llama.cpp's Q4_K_M" in s
    assert "no task shows it more than 1 point worse" in s
    assert f"200 items on hellaswag can show {ind['mde'] * 100:.1f} points at best" in s
    assert f"1 point needs about {ind['items_to_show']:,} items." in s


def test_a_narrower_margin_tightens_the_kld_bound():
    verdict = decide(_issue_ladder(), margin=0.005)
    # 0.031 × 0.5 = 0.0155 still admits Q4_K_M's 0.0121; at 0.3 points (0.0093) it does not, Q6_K is indicated.
    assert verdict["indicate_kld"] == pytest.approx(0.0155) and verdict["pick"] == "Q4_K_M"
    quarter = decide(_issue_ladder(), margin=0.003)
    assert quarter["pick"] == "Q6_K" and quarter["strength"] == "indicated"
    assert "scaled to 0.3 points" in quarter["sentence"]


def test_a_task_that_shows_a_variant_worse_stops_the_indication_and_the_sentence_names_it():
    # Q4_K_M's KLD is small, yet it loses 12 points on the task: shown worse, so the next one up is indicated.
    verdict = decide(_issue_ladder(q4_loss=0.12), margin=0.01)
    assert verdict["pick"] == "Q6_K" and verdict["strength"] == "indicated"
    q4 = next(v for v in verdict["variants"] if v["quant"] == "Q4_K_M")
    assert q4["tasks"]["hellaswag"]["shown_worse"]


def test_with_every_variant_shown_worse_or_unvouched_the_sentence_keeps_f16_and_says_which_is_worse():
    rng = np.random.default_rng(9)
    verdict = decide([_rung("Q8_0", 8_000_000, {"mmlu": _paired_diffs(rng, 200, 0.03, 0.03, 1)[0]}, kld=0.08,
                            kld_se=0.003),
                      _rung("Q4_K_M", 4_000_000, {"mmlu": _paired_diffs(rng, 400, 0.02, 0.20, 1)[0]}, kld=0.3,
                            kld_se=0.01)], margin=0.01)
    assert verdict["pick"] is None and verdict["strength"] == "none"
    s = verdict["sentence"]
    assert s.startswith("Ship F16, no quantized variant shown or indicated within 1 point: Q4_K_M loses ")
    assert "on mmlu (95% CI " in s and "), shown worse; " in s
    assert "the tasks cannot decide Q8_0" in s and "no mean KLD is shown under 0.031 (Q8_0: at most 0.0859)" in s
