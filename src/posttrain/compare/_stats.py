"""Paired statistics for one comparison: two models' per-item scores on the same items.

Rules (documented in docs/compare.md):

* Per model: mean, CLT standard error (sample SD with ddof=1 over √n, as lm-eval reports it) and a
  (1−α) interval. Binary metrics always get the Wilson score interval: it equals the CLT interval to
  display precision when n·p·(1−p) is large, and stays inside [0, 1] and keeps its coverage when n is
  small or p is near 0 or 1. Other metrics get mean ± t(n−1)·SE.
* Paired difference d = new − baseline per item: mean, naive SE = SD(d)/√n, and the cluster-robust
  SE (CR1): SE² = G/(G−1) · Σ_g (Σ_{i∈g} (d_i − d̄))² / n², G clusters; its interval and test use
  t with G−1 degrees of freedom. Clustered SE is used for the CI, the p-value and the verdict whenever
  the items fall in at least MIN_CLUSTERS (10) clusters and some cluster holds 2 or more items; with
  fewer clusters it is reported but the naive test decides.
* Tests without clusters: McNemar's exact test on the discordant pairs (binary), paired t (other
  metrics) plus a seeded percentile bootstrap of the mean difference as a check (Koehn 2004).
* Every number is a finite float or None: undefined quantities never leak NaN into JSON.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar

from posttrain._ci import finite, mean_interval
from posttrain._ci import t_interval as _t_interval
from posttrain.compare._power import min_detectable_effect

_BOOT_CELLS = 2_000_000  # resampled values held in memory at once (16 MB of float64)


def is_binary(*arrays: np.ndarray) -> bool:
    return all(a.size > 0 and bool(np.all((a == 0) | (a == 1))) for a in arrays)


def summarize_side(x: np.ndarray, binary: bool, alpha: float) -> dict:
    """Mean, CLT standard error and a (1−α) interval for one model's per-item scores (posttrain._ci)."""
    return mean_interval([float(v) for v in x], alpha)


# Fewest clusters for which the clustered SE drives the interval and the verdict (Cameron & Miller
# 2015: below a few dozen clusters CR1 is biased; below ~10 it is unusable).
MIN_CLUSTERS = 10


def clustered_se(d: np.ndarray, cluster_codes: np.ndarray) -> tuple[float, int]:
    """CR1 cluster-robust standard error of mean(d) and the number of clusters G.

    The mean is an intercept-only regression, so the Stata/Liang–Zeger small-sample factor
    G/(G−1)·(N−1)/(N−K) reduces to G/(G−1) with K = 1.
    """
    n = d.size
    resid = d - d.mean()
    sums = np.bincount(cluster_codes, weights=resid)
    g = int(np.count_nonzero(np.bincount(cluster_codes)))
    var = g / (g - 1) * float(np.sum(sums**2)) / n**2
    return math.sqrt(max(var, 0.0)), g


def usable_clusters(cluster_ids: np.ndarray | None) -> np.ndarray | None:
    """Integer codes for the clusters, or None when clustering says nothing (fewer than 2 clusters,
    or every item alone in its cluster)."""
    if cluster_ids is None or cluster_ids.size == 0:
        return None
    _, codes = np.unique(cluster_ids, return_inverse=True)
    counts = np.bincount(codes)
    if counts.size < 2 or counts.max() < 2:
        return None
    return codes


def _p_from_t(mean: float, se: float | None, df: int) -> tuple[float | None, float | None]:
    """Two-sided t-test p-value for mean/se, handling se = 0 without NaN."""
    if se is None or df < 1:
        return None, None
    if se == 0:
        return None, (1.0 if mean == 0 else 0.0)
    t = mean / se
    return finite(t), finite(2 * stats.t.sf(abs(t), df))


def mcnemar_exact(new: np.ndarray, base: np.ndarray) -> dict:
    """McNemar's exact test: b = items only new gets right, c = items only baseline gets right."""
    b = int(np.count_nonzero((new == 1) & (base == 0)))
    c = int(np.count_nonzero((new == 0) & (base == 1)))
    both = int(np.count_nonzero((new == 1) & (base == 1)))
    neither = int(np.count_nonzero((new == 0) & (base == 0)))
    if b + c == 0:
        # No discordant pair: nothing speaks for a difference (statsmodels agrees, p = 1).
        return {"name": "mcnemar_exact", "statistic": 0.0, "p_value": 1.0, "b": b, "c": c}
    res = mcnemar([[both, b], [c, neither]], exact=True)
    return {"name": "mcnemar_exact", "statistic": finite(res.statistic), "p_value": finite(min(1.0, res.pvalue)),
            "b": b, "c": c}


def paired_t(new: np.ndarray, base: np.ndarray) -> dict:
    d = new - base
    n = d.size
    if n < 2:
        return {"name": "paired_t", "statistic": None, "p_value": None, "df": None}
    if np.all(d == d[0]):
        # scipy returns NaN for zero spread; a constant difference is either nothing or certain.
        return {"name": "paired_t", "statistic": None, "p_value": 1.0 if d[0] == 0 else 0.0, "df": n - 1}
    res = stats.ttest_rel(new, base)
    return {"name": "paired_t", "statistic": finite(res.statistic), "p_value": finite(res.pvalue), "df": n - 1}


def paired_bootstrap(d: np.ndarray, cluster_codes: np.ndarray | None, *, alpha: float, seed: int,
                     n_boot: int) -> dict | None:
    """Seeded percentile bootstrap of the mean paired difference (Koehn 2004), resampling items, or
    whole clusters when there are clusters. p-value: twice the smaller tail of the bootstrap
    distribution beyond 0, with the +1 correction so it is never exactly 0."""
    if n_boot <= 0 or d.size < 2:
        return None
    if np.all(d == d[0]):
        p = 1.0 if d[0] == 0 else 1.0 / (n_boot + 1)
        return {"ci": [float(d[0]), float(d[0])], "p_value": p, "n_resamples": n_boot, "seed": seed}
    rng = np.random.default_rng(seed)
    if cluster_codes is None:
        data: tuple[np.ndarray, ...] = (d,)

        def statistic(x, axis=-1):
            return x.mean(axis=axis)
    else:
        sums = np.bincount(cluster_codes, weights=d)
        sizes = np.bincount(cluster_codes).astype(float)
        keep = sizes > 0
        data = (sums[keep], sizes[keep])

        def statistic(s, m, axis=-1):
            return s.sum(axis=axis) / m.sum(axis=axis)
    # Resample in batches: 10,000 resamples of an MMLU-sized task at once would take gigabytes.
    batch = max(1, _BOOT_CELLS // data[0].size)
    res = stats.bootstrap(data, statistic, n_resamples=n_boot, confidence_level=1 - alpha,
                          method="percentile", paired=cluster_codes is not None, vectorized=True,
                          random_state=rng, batch=batch)
    dist = res.bootstrap_distribution
    tail = min(np.count_nonzero(dist <= 0), np.count_nonzero(dist >= 0))
    p = min(1.0, 2 * (tail + 1) / (n_boot + 1))
    return {"ci": [finite(res.confidence_interval.low), finite(res.confidence_interval.high)],
            "p_value": finite(p), "n_resamples": n_boot, "seed": seed}


def paired_comparison(new: np.ndarray, base: np.ndarray, cluster_ids: np.ndarray | None = None, *,
                      alpha: float = 0.05, seed: int = 0, n_boot: int = 10000,
                      binary: bool | None = None) -> dict:
    """All numbers of one comparison except the multiple-comparison correction.

    `new` and `base` are aligned per item; `cluster_ids` (same length, any hashable values) groups
    items that share a passage or subject. Returns n, binary, new, baseline, diff, test, test_naive,
    bootstrap, p_value (the one that enters Holm) and mde_80.
    """
    new = np.asarray(new, dtype=float)
    base = np.asarray(base, dtype=float)
    if new.shape != base.shape or new.ndim != 1:
        raise ValueError("new and base must be 1-D arrays of the same length")
    n = int(new.size)
    if binary is None:
        binary = is_binary(new, base)
    d = new - base
    mean_d = float(d.mean()) if n else None
    se_naive = finite(d.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    corr = None
    if n > 2 and new.std() > 0 and base.std() > 0:
        corr = finite(np.corrcoef(new, base)[0, 1])

    if cluster_ids is not None:
        cluster_ids = np.asarray(cluster_ids)
        if cluster_ids.dtype == object:
            cluster_ids = cluster_ids.astype(str)
    codes = usable_clusters(cluster_ids)
    se_cl, n_clusters = (clustered_se(d, codes) if codes is not None else (None, None))
    naive_test = mcnemar_exact(new, base) if binary else paired_t(new, base)
    # With a handful of clusters the cluster-robust variance is itself too noisy to lean on (and t
    # with G−1 df gives intervals wider than the metric's range); it is reported, not used.
    if codes is not None and n_clusters < MIN_CLUSTERS:
        codes = None
    if codes is not None:
        se, df = se_cl, n_clusters - 1
        stat, p = _p_from_t(mean_d, se_cl, df)
        test = {"name": "clustered_t", "statistic": stat, "p_value": p, "df": df}
        if binary:
            test |= {"b": naive_test["b"], "c": naive_test["c"]}
        mde_nobs = n_clusters
    else:
        se, df = se_naive, n - 1
        test, naive_test = naive_test, None
        mde_nobs = n
    ci = _t_interval(mean_d, se, df, alpha) if mean_d is not None else None
    if ci is None and mean_d is not None and se == 0:
        ci = [mean_d, mean_d]

    boot = None if binary else paired_bootstrap(d, codes, alpha=alpha, seed=seed, n_boot=n_boot)
    # MDE at the unadjusted alpha, from the SE actually used (the clustered one carries the design effect).
    mde = min_detectable_effect(se * math.sqrt(mde_nobs), mde_nobs, alpha=alpha) if se else None
    return {
        "n": n,
        "binary": bool(binary),
        "new": summarize_side(new, binary, alpha),
        "baseline": summarize_side(base, binary, alpha),
        "diff": {"mean": finite(mean_d), "se": finite(se), "se_naive": se_naive, "se_clustered": finite(se_cl),
                 "ci": ci, "correlation": corr, "n_clusters": n_clusters},
        "test": test,
        "test_naive": naive_test,
        "bootstrap": boot,
        "p_value": test["p_value"],
        "mde_80": finite(mde),
    }
