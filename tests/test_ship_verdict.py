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


def _rung(quant, size, diffs, kld=0.01):
    return Rung(quant, size, bits_per_weight=size / 1e6, tg_tok_s=40.0, kld_mean=kld,
                diffs={task: np.asarray(d, float) for task, d in diffs.items()})


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
    assert verdict["pick"] == "Q5_K_M"
    s = verdict["sentence"]
    assert s.startswith("Ship Q5_K_M (5.5 bits/weight") and "no more than 1 point" in s
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


def test_too_few_items_give_an_undecided_verdict_with_the_items_needed():
    rng = np.random.default_rng(5)
    verdict = decide([_rung("Q8_0", 8_000_000, {"hellaswag": _paired_diffs(rng, 50, 0.04, 0.04, 1)[0]}),
                      _rung("Q4_K_M", 4_000_000, {"hellaswag": _paired_diffs(rng, 50, 0.06, 0.06, 1)[0]})],
                     margin=0.01)
    assert verdict["pick"] is None
    s = verdict["sentence"]
    assert s.startswith("The data cannot decide") and "with 50 items on hellaswag" in s
    needed = max(v["tasks"]["hellaswag"]["items_needed"] for v in verdict["variants"])
    assert needed > 1000 and f"about {needed:,} items" in s
    assert all(v["status"] == "undecided" for v in verdict["variants"])


def test_identical_answers_on_few_items_do_not_prove_equivalence():
    # 20 items, no disagreement: the SD floor (one disagreement in n) keeps this from passing at 1 point.
    t = tost(np.zeros(20), 0.01)
    assert not t["equivalent"] and t["mde"] > 0.01
    # The same agreement on 5,000 items does show it.
    assert tost(np.zeros(5000), 0.01)["equivalent"]
