"""The one confidence interval of a mean score that posttrain prints anywhere (eval table, report,
compare document), so the numbers agree wherever a user reads them.

Method: Wilson's score interval when every score is 0 or 1 (accuracy, exact match: sane near 0 and
1 and for small n), else Student's t with n−1 degrees of freedom on the sample standard deviation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def finite(x: Any) -> float | None:
    """A plain float, or None for NaN/inf/None: documents never carry NaN."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def t_interval(mean: float, se: float | None, df: int, alpha: float = 0.05) -> list[float | None] | None:
    from scipy import stats

    if se is None or df < 1:
        return None
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return [finite(mean - half), finite(mean + half)]


def mean_interval(values: Sequence[float], alpha: float = 0.05) -> dict[str, Any]:
    """{"mean", "se", "ci": [lo, hi] or None, "ci_method": "wilson" | "t" | None} of per-item scores."""
    n = len(values)
    if n == 0:
        return {"mean": None, "se": None, "ci": None, "ci_method": None}
    mean = sum(values) / n
    se = finite(math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)) if n > 1 else None
    if all(v in (0.0, 1.0) for v in values):
        from statsmodels.stats.proportion import proportion_confint

        lo, hi = proportion_confint(int(round(sum(values))), n, alpha=alpha, method="wilson")
        return {"mean": mean, "se": se, "ci": [finite(lo), finite(hi)], "ci_method": "wilson"}
    return {"mean": mean, "se": se, "ci": t_interval(mean, se, n - 1, alpha), "ci_method": "t"}
