"""Power of the paired test: the smallest difference this n can detect, and the n a difference needs.

Both use statsmodels' `TTestPower` (the one-sample t test on per-item differences, which is what a
paired comparison is). The effect is in the metric's own units; `sd_diff` is the standard deviation
of the per-item differences new − baseline (for a clustered design, pass the effective SD
`se_clustered * sqrt(n)` so the design effect is included).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from statsmodels.stats.power import TTestPower

from posttrain.errors import PosttrainError


@lru_cache(maxsize=4096)
def _standardized_mde(nobs: int, alpha: float, power: float) -> float | None:
    # Cached: simulations and families of comparisons ask for the same n again and again, and
    # solve_power is a root search (~10 ms).
    try:
        es = TTestPower().solve_power(effect_size=None, nobs=nobs, alpha=alpha, power=power,
                                      alternative="two-sided")
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None
    es = float(np.ravel(es)[0])  # solve_power returns a scalar or a 1-element array
    return es if math.isfinite(es) and es > 0 else None


def min_detectable_effect(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true mean difference that a two-sided paired t test on `n` items detects with
    probability `power` at level `alpha`, given per-item differences with standard deviation `sd_diff`.

    None when it is undefined (fewer than 2 items, or no variation at all in the differences).
    """
    if n is None or n < 2 or sd_diff is None or not math.isfinite(sd_diff) or sd_diff <= 0:
        return None
    es = _standardized_mde(int(n), float(alpha), float(power))
    return None if es is None else es * sd_diff


def items_needed(effect: float, sd_diff: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """How many paired items a two-sided paired t test needs to detect a true mean difference of
    `effect` (metric units, e.g. 0.02 = 2 points of accuracy) with probability `power` at `alpha`."""
    if not effect or not math.isfinite(effect):
        raise PosttrainError(f"effect must be a non-zero number, got {effect!r}",
                             remedy="give the difference to detect in metric units, e.g. --mde 0.02")
    if sd_diff is None or not math.isfinite(sd_diff) or sd_diff <= 0:
        raise PosttrainError("the per-item differences have no spread, so no sample size can be derived",
                             remedy="compare on a task where the two models disagree on some items")
    es = abs(effect) / sd_diff
    try:
        n = TTestPower().solve_power(effect_size=es, nobs=None, alpha=alpha, power=power,
                                     alternative="two-sided")
    except (ValueError, RuntimeError, ZeroDivisionError) as e:  # pragma: no cover - solver failure
        raise PosttrainError(f"could not solve for the sample size: {e}") from e
    n = float(np.ravel(n)[0])
    return max(2, math.ceil(n)) if math.isfinite(n) else 2
