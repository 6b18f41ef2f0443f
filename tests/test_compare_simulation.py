"""compare: seeded simulations check that the tests hold their level, reach their analytic power,
and that clustered standard errors are right where naive ones are too small."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.power import TTestPower

from posttrain.compare import min_detectable_effect
from posttrain.compare._stats import paired_comparison

ALPHA = 0.05


def rejection_rate(new: np.ndarray, base: np.ndarray, clusters: np.ndarray | None = None) -> float:
    p = np.array([paired_comparison(new[s], base[s], clusters, alpha=ALPHA, n_boot=0)["p_value"]
                  for s in range(new.shape[0])])
    assert np.all(np.isfinite(p))
    return float(np.mean(p < ALPHA))


def test_identical_binary_models_reject_at_about_alpha_with_mcnemar():
    # Two models with the same per-item correctness probabilities, answering independently:
    # the null is true. McNemar's exact test is slightly conservative; it must still be near 5%.
    rng = np.random.default_rng(20261125)
    sims, n = 3000, 400
    difficulty = rng.beta(2, 2, (sims, n))
    new = (rng.random((sims, n)) < difficulty).astype(float)
    base = (rng.random((sims, n)) < difficulty).astype(float)
    assert 0.035 <= rejection_rate(new, base) <= 0.065


def test_identical_continuous_models_reject_at_about_alpha_with_paired_t():
    rng = np.random.default_rng(1)
    sims, n = 2500, 30
    item = rng.normal(0, 1, (sims, n))  # per-item difficulty shared by both models
    new = item + rng.normal(0, 0.5, (sims, n))
    base = item + rng.normal(0, 0.5, (sims, n))
    assert 0.035 <= rejection_rate(new, base) <= 0.065


def test_known_difference_reaches_the_analytic_power():
    rng = np.random.default_rng(2)
    sims, n, sd = 2000, 40, 1.0
    effect = min_detectable_effect(sd, n, alpha=ALPHA, power=0.8) * 0.8  # aim below 80% on purpose
    analytic = TTestPower().power(effect_size=effect / sd, nobs=n, alpha=ALPHA)
    item = rng.normal(0, 2, (sims, n))
    base = item
    new = item + effect + rng.normal(0, sd, (sims, n))
    empirical = rejection_rate(new, base)
    assert 0.5 < analytic < 0.75
    assert empirical == pytest.approx(analytic, abs=0.035)


def test_known_binary_difference_is_detected_at_about_the_reported_mde_power():
    # A quantized model that flips 6% of the baseline's right answers to wrong, nothing else.
    rng = np.random.default_rng(3)
    sims, n = 2000, 300
    base = (rng.random((sims, n)) < 0.6).astype(float)
    flips = rng.random((sims, n)) < 0.06
    new = np.where(flips, 0.0, base)
    power = rejection_rate(new, base)
    # The analytic power of the paired test at the true effect and true SD of differences.
    true_mean = 0.6 * 0.06
    true_sd = np.sqrt(true_mean - true_mean**2)
    analytic = TTestPower().power(effect_size=true_mean / true_sd, nobs=n, alpha=ALPHA)
    assert power == pytest.approx(analytic, abs=0.05)


def clustered_null(rng, sims, n_clusters, per_cluster, tau):
    """Binary items in clusters (subjects); the new model is better on some subjects and worse on
    others (cluster effect of SD tau on its accuracy), with no difference on average."""
    g = np.repeat(np.arange(n_clusters), per_cluster)
    p_base = rng.uniform(0.3, 0.7, (sims, n_clusters * per_cluster))
    shift = rng.normal(0, tau, (sims, n_clusters))
    p_new = np.clip(p_base + shift[:, g], 0, 1)
    base = (rng.random(p_base.shape) < p_base).astype(float)
    new = (rng.random(p_new.shape) < p_new).astype(float)
    return new, base, g


def test_clustered_se_matches_the_spread_over_simulations_and_naive_se_is_too_small():
    rng = np.random.default_rng(4)
    sims, G, m = 1500, 40, 20
    new, base, g = clustered_null(rng, sims, G, m, tau=0.2)
    out = [paired_comparison(new[s], base[s], g, alpha=ALPHA, n_boot=0) for s in range(sims)]
    empirical_sd = np.std((new - base).mean(axis=1), ddof=1)
    naive = np.sqrt(np.mean([o["diff"]["se_naive"] ** 2 for o in out]))
    clustered = np.sqrt(np.mean([o["diff"]["se_clustered"] ** 2 for o in out]))
    assert naive < 0.75 * empirical_sd  # ignoring the clusters understates the error
    assert clustered == pytest.approx(empirical_sd, rel=0.08)
    # …and therefore the clustered test holds its level where the naive McNemar test does not.
    p_clustered = np.array([o["test"]["p_value"] for o in out])
    p_naive = np.array([o["test_naive"]["p_value"] for o in out])
    assert 0.035 <= np.mean(p_clustered < ALPHA) <= 0.075
    assert np.mean(p_naive < ALPHA) > 0.15
