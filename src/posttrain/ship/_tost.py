"""Equivalence of a quantized variant to F16 on one task: two one-sided tests (TOST) on paired items.

"No significant difference" is not "no difference": a small n fails to find any. Equivalence turns
the question round: H0 is that the variant is at least `margin` away from F16 (|Δ| ≥ margin), and only
rejecting it at α shows that the loss is smaller than the margin (Schuirmann 1987). With per-item
differences d = variant − F16 (0/1 scores: −1, 0, +1), the two one-sided t tests are

    p_low  = P(T ≥ (d̄ + margin) / se)      (H0: Δ ≤ −margin)
    p_high = P(T ≤ (d̄ − margin) / se)      (H0: Δ ≥ +margin)

and p = max(p_low, p_high); equivalence is shown when p < α, the same as the (1 − 2α) interval lying
inside (−margin, +margin). The standard error is compare's: the cluster-robust one (MMLU subjects,
HellaSwag activities) when there are enough clusters, else SD/√n.

When the two models agree on every item the sample SD is 0 and the t statistic undefined. A
quantized model that agreed on 30 items may still disagree on the 31st: the SD is then taken as if
one item in n had disagreed (√(1/n)), which keeps the test honest for small n and vanishes for large n.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from posttrain.compare import MIN_CLUSTERS, clustered_se, usable_clusters

POWER = 0.8


# Student's t and the normal through scipy.special, the functions scipy.stats.t and .norm call underneath:
# the same numbers without the ~0.1 ms of argument checks per call (a frozen stats.t(df) costs ~1 ms),
# which the items-needed loop and the verdict's simulations pay thousands of times.
def _t_ppf(q: float, df: float) -> float:
    return float(special.stdtrit(df, q))


def _z(q: float) -> float:
    return float(special.ndtri(q))


def naive_se(d: np.ndarray) -> np.ndarray:
    """SD/√n of each row of `d` (items along the last axis), the SD floored at √(1/n) (see above)."""
    n = d.shape[-1]
    return np.maximum(d.std(axis=-1, ddof=1), math.sqrt(1.0 / n)) / math.sqrt(n)


def tost_p(mean, se, df: int, margin: float):
    """TOST p-value max(p_low, p_high) for means and standard errors (scalars or arrays)."""
    return np.maximum(special.stdtr(df, -(np.asarray(mean) + margin) / se), special.stdtr(df, (np.asarray(mean) - margin) / se))


def holm_adjusted(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (the same numbers as statsmodels' multipletests(method="holm"),
    which also runs a full garbage collection on every call: 0.1 s, too slow for the simulations)."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def equivalent_rows(d: np.ndarray, margin: float, alpha: float = 0.05) -> np.ndarray:
    """Whether TOST (naive SE) shows equivalence for each row of `d`: the simulations' vectorised path,
    the same arithmetic as `tost` without clusters."""
    return tost_p(d.mean(axis=-1), naive_se(d), d.shape[-1] - 1, margin) < alpha


def _se_df(d: np.ndarray, cluster_ids: np.ndarray | None) -> tuple[float, int, str]:
    n = d.size
    codes = usable_clusters(np.asarray(cluster_ids).astype(str)) if cluster_ids is not None else None
    if codes is not None:
        se, g = clustered_se(d, codes)
        if g >= MIN_CLUSTERS and se > 0:
            return se, g - 1, "clustered"
    return float(naive_se(d)), n - 1, "naive"


def tost(d: np.ndarray, margin: float, alpha: float = 0.05, cluster_ids: np.ndarray | None = None) -> dict:
    """TOST of per-item differences `d` against ±`margin` (metric units: 0.01 = one point of accuracy).

    Returns mean, se, df, the 95% CI of the difference, the (1−2α) CI the test uses, p_value, equivalent
    (unadjusted), the smallest margin this n could show with 80% power if the true difference were 0
    (`mde`), and the items that `margin` needs (`items_needed`), both from the observed spread.
    """
    d = np.asarray(d, dtype=float)
    n = int(d.size)
    if n < 2:
        return {"n": n, "mean": float(d.mean()) if n else None, "se": None, "df": None, "ci95": None,
                "ci_tost": None, "p_value": 1.0, "equivalent": False, "mde": None, "items_needed": None,
                "se_method": None}
    se, df, how = _se_df(d, cluster_ids)
    mean = float(d.mean())
    p = float(tost_p(mean, se, df, margin))
    half95, half_tost = _t_ppf(0.975, df) * se, _t_ppf(1 - alpha, df) * se
    sd_unit = se * math.sqrt(n)  # the per-item spread the SE implies (design effect included)
    return {"n": n, "mean": mean, "se": se, "df": df, "se_method": how,
            "ci95": [mean - half95, mean + half95], "ci_tost": [mean - half_tost, mean + half_tost],
            "p_value": p, "equivalent": p < alpha,
            "mde": smallest_margin(sd_unit, n, alpha), "items_needed": items_needed(sd_unit, margin, alpha)}


def tost_power(sd: float, n: int, margin: float, true_diff: float = 0.0, alpha: float = 0.05) -> float:
    """Probability that TOST shows equivalence on `n` items when the true difference is `true_diff`
    and the per-item differences have SD `sd` (normal approximation of the mean, t critical value)."""
    se = sd / math.sqrt(n)
    crit = _t_ppf(1 - alpha, n - 1)
    upper = special.ndtr((margin - true_diff) / se - crit)
    lower = special.ndtr((-margin - true_diff) / se + crit)
    return max(0.0, float(upper - lower))


def smallest_margin(sd: float, n: int, alpha: float = 0.05, power: float = POWER) -> float:
    """The narrowest margin that `n` items show with probability `power` when the true difference is 0."""
    return sd / math.sqrt(n) * (_t_ppf(1 - alpha, n - 1) + _z((1 + power) / 2))


def items_needed(sd: float, margin: float, alpha: float = 0.05, power: float = POWER) -> int:
    """Paired items TOST needs to show equivalence within `margin` with probability `power` when the
    true difference is 0 (fixed point of the t critical value's dependence on n)."""
    z = _z((1 + power) / 2)
    n = 2
    for _ in range(50):
        nxt = max(2, math.ceil(((_t_ppf(1 - alpha, n - 1) + z) * sd / margin) ** 2))
        if nxt == n:
            break
        n = nxt
    return n
