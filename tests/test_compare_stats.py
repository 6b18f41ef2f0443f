"""compare: the numbers agree with scipy/statsmodels on fixed data, and edge cases give sensible,
NaN-free documents or clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from rich.console import Console
from scipy import stats
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.proportion import proportion_confint

from posttrain.compare import (
    SCHEMA,
    ItemResult,
    compare_family,
    compare_items,
    items_needed,
    min_detectable_effect,
    render_table,
)
from posttrain.errors import PosttrainError


def items(values, task="t", *, group=None, metric="acc", flt="none", clusters=None, hashes=None, doc_ids=None):
    return [ItemResult(task=task, group=group, doc_id=doc_ids[i] if doc_ids else i,
                       doc_hash=hashes[i] if hashes else f"{task}-{i}", filter=flt, metric=metric,
                       value=float(v), cluster=clusters[i] if clusters else None,
                       question=f"question {i}", target="A", response="B" if v else "C")
            for i, v in enumerate(values)]


def strict_json(doc: dict) -> dict:
    """The document must be valid strict JSON: no NaN or inf anywhere."""
    return json.loads(json.dumps(doc, allow_nan=False))


# Fixed binary data: 60 items, b = 14 (only new right), c = 5 (only baseline right).
BOTH, B, C, NEITHER = 25, 14, 5, 16
NEW_BIN = np.array([1] * BOTH + [1] * B + [0] * C + [0] * NEITHER, dtype=float)
BASE_BIN = np.array([1] * BOTH + [0] * B + [1] * C + [0] * NEITHER, dtype=float)


def test_binary_comparison_matches_statsmodels_and_scipy():
    doc = strict_json(compare_items(items(NEW_BIN), items(BASE_BIN), new_label="new", baseline_label="base"))
    assert doc["schema"] == SCHEMA == "posttrain.compare/1"
    (c,) = doc["comparisons"]
    n = NEW_BIN.size
    assert c["n"] == n and c["binary"] is True

    ref = mcnemar([[BOTH, B], [C, NEITHER]], exact=True)
    assert c["test"]["name"] == "mcnemar_exact"
    assert (c["test"]["b"], c["test"]["c"]) == (B, C)
    assert c["test"]["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert c["test"]["p_value"] == pytest.approx(stats.binomtest(C, B + C, 0.5).pvalue, rel=1e-12)
    assert c["p_adjusted"] == pytest.approx(ref.pvalue)  # a family of one: Holm changes nothing

    for side, x in (("new", NEW_BIN), ("baseline", BASE_BIN)):
        lo, hi = proportion_confint(int(x.sum()), n, alpha=0.05, method="wilson")
        assert c[side]["mean"] == pytest.approx(x.mean())
        assert c[side]["ci"] == pytest.approx([lo, hi])
        assert c[side]["ci_method"] == "wilson"
        assert c[side]["se"] == pytest.approx(x.std(ddof=1) / math.sqrt(n))

    d = NEW_BIN - BASE_BIN
    se = d.std(ddof=1) / math.sqrt(n)
    half = stats.t.ppf(0.975, n - 1) * se
    assert c["diff"]["mean"] == pytest.approx((B - C) / n)
    assert c["diff"]["se"] == pytest.approx(se) and c["diff"]["se_naive"] == pytest.approx(se)
    assert c["diff"]["se_clustered"] is None and c["diff"]["cluster_key"] is None
    assert c["diff"]["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert c["diff"]["correlation"] == pytest.approx(np.corrcoef(NEW_BIN, BASE_BIN)[0, 1])
    assert c["bootstrap"] is None  # binary metrics: McNemar is exact, no bootstrap


def test_positive_correlation_makes_the_paired_se_smaller_than_the_unpaired_one():
    rng = np.random.default_rng(3)
    skill = rng.random(400)
    new = (skill > 0.45).astype(float)
    base = np.where(rng.random(400) < 0.9, new, 1 - new)  # agrees with new on ~90% of items
    (c,) = compare_items(items(new), items(base), new_label="n", baseline_label="b")["comparisons"]
    unpaired = math.hypot(c["new"]["se"], c["baseline"]["se"])
    assert c["diff"]["correlation"] > 0.5
    assert c["diff"]["se"] < 0.6 * unpaired


def test_continuous_metric_uses_paired_t_and_a_seeded_bootstrap():
    rng = np.random.default_rng(7)
    base = rng.normal(0.5, 0.2, 80)
    new = base + rng.normal(0.05, 0.1, 80)
    doc = strict_json(compare_items(items(new, metric="f1"), items(base, metric="f1"), new_label="n",
                                    baseline_label="b", n_boot=4000, seed=11))
    (c,) = doc["comparisons"]
    ref = stats.ttest_rel(new, base)
    assert c["binary"] is False
    assert c["test"]["name"] == "paired_t"
    assert c["test"]["statistic"] == pytest.approx(ref.statistic)
    assert c["test"]["p_value"] == pytest.approx(ref.pvalue)
    assert c["new"]["ci_method"] == "t"
    se = c["new"]["se"]
    assert c["new"]["ci"] == pytest.approx([new.mean() - stats.t.ppf(0.975, 79) * se,
                                            new.mean() + stats.t.ppf(0.975, 79) * se])
    boot = c["bootstrap"]
    assert boot["n_resamples"] == 4000 and boot["seed"] == 11
    # The bootstrap is a check on the t interval: both bracket the mean and roughly agree.
    assert boot["ci"][0] < c["diff"]["mean"] < boot["ci"][1]
    assert boot["ci"] == pytest.approx(c["diff"]["ci"], abs=0.01)
    assert boot["p_value"] < 0.05 and c["verdict"] == "better"
    again = compare_items(items(new, metric="f1"), items(base, metric="f1"), new_label="n", baseline_label="b",
                          n_boot=4000, seed=11)
    assert again["comparisons"][0]["bootstrap"] == boot  # seeded: reproducible
    other = compare_items(items(new, metric="f1"), items(base, metric="f1"), new_label="n", baseline_label="b",
                          n_boot=4000, seed=12)
    assert other["comparisons"][0]["bootstrap"]["ci"] != boot["ci"]


def test_clustered_se_matches_statsmodels_cluster_robust_ols():
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(12), 10)
    shift = rng.normal(0, 0.3, 12)[g]  # the difference varies by subject
    base = (rng.random(120) < 0.5).astype(float)
    new = np.clip(base + (rng.random(120) < np.abs(shift)) * np.sign(shift), 0, 1)
    subjects = [f"s{k}" for k in g]
    (c,) = compare_items(items(new, clusters=subjects), items(base, clusters=subjects), new_label="n",
                         baseline_label="b", clusters={"t": "subject"})["comparisons"]
    d = new - base
    fit = OLS(d, np.ones_like(d)).fit(cov_type="cluster", cov_kwds={"groups": g})
    assert c["diff"]["se_clustered"] == pytest.approx(float(fit.bse[0]), rel=1e-9)
    assert c["diff"]["se_naive"] == pytest.approx(d.std(ddof=1) / math.sqrt(120))
    assert c["diff"]["se"] == c["diff"]["se_clustered"]  # clustered SE drives CI and verdict
    assert c["diff"]["n_clusters"] == 12 and c["diff"]["cluster_key"] == "subject"
    t = d.mean() / fit.bse[0]
    assert c["test"]["name"] == "clustered_t" and c["test"]["df"] == 11
    assert c["test"]["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 11))
    half = stats.t.ppf(0.975, 11) * fit.bse[0]
    assert c["diff"]["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert c["test_naive"]["name"] == "mcnemar_exact"  # the unclustered test is still reported
    # Clustering can be switched off per task.
    (off,) = compare_items(items(new, clusters=subjects), items(base, clusters=subjects), new_label="n",
                           baseline_label="b", clusters={"t": "none"})["comparisons"]
    assert off["diff"]["se_clustered"] is None and off["test"]["name"] == "mcnemar_exact"


def test_group_items_without_cluster_are_clustered_by_leaf_task():
    vals = np.tile([1, 0, 1, 1, 0], 8).astype(float)
    base = np.roll(vals, 1)
    new_items = items(vals[:20], "g_a", group="g") + items(vals[20:], "g_b", group="g")
    base_items = items(base[:20], "g_a", group="g") + items(base[20:], "g_b", group="g")
    (c,) = compare_items(new_items, base_items, new_label="n", baseline_label="b")["comparisons"]
    assert c["task"] == "g" and c["n"] == 40
    assert c["diff"]["n_clusters"] == 2 and c["diff"]["cluster_key"] == "task"


def test_holm_across_every_comparison_in_the_document():
    rng = np.random.default_rng(1)
    new, base = [], []
    for task, effect in (("big", 0.35), ("small", 0.08), ("none", 0.0)):
        b = (rng.random(150) < 0.5).astype(float)
        flip = rng.random(150) < effect
        n = np.where(flip, 1.0, b)
        new += items(n, task)
        base += items(b, task)
    doc = strict_json(compare_items(new, base, new_label="n", baseline_label="b"))
    raw = [c["p_value"] for c in doc["comparisons"]]
    reject, adjusted, _, _ = multipletests(raw, alpha=0.05, method="holm")
    assert [c["p_adjusted"] for c in doc["comparisons"]] == pytest.approx(list(adjusted))
    for c, r in zip(doc["comparisons"], reject, strict=True):
        assert c["verdict"] == ("better" if r else "no significant difference")
    assert doc["comparisons"][0]["task"] == "big" and doc["comparisons"][0]["verdict"] == "better"


def test_family_of_variants_is_corrected_as_one_family():
    rng = np.random.default_rng(2)
    truth = (rng.random(300) < 0.6).astype(float)
    variants = {}
    for name, noise in (("F16", 0.01), ("Q8_0", 0.03), ("Q4_K_M", 0.15)):
        flip = rng.random(300) < noise
        variants[name] = items(np.where(flip, 0.0, truth))
    doc = strict_json(compare_family([(k, v, "base", items(truth)) for k, v in variants.items()]))
    assert [c["new_label"] for c in doc["comparisons"]] == ["F16", "Q8_0", "Q4_K_M"]
    assert {c["baseline_label"] for c in doc["comparisons"]} == {"base"}
    _, adjusted, _, _ = multipletests([c["p_value"] for c in doc["comparisons"]], method="holm")
    assert [c["p_adjusted"] for c in doc["comparisons"]] == pytest.approx(list(adjusted))
    q4 = doc["comparisons"][2]
    assert q4["verdict"] == "worse"
    assert q4["sentence"].startswith("Q4_K_M loses ")
    assert "significant after Holm" in q4["sentence"]
    assert doc["pairs"] == [{"new": k, "baseline": "base"} for k in variants]


def test_sentences_state_loss_with_ci_or_the_detectable_effect():
    new = np.array([1.0] * 50 + [0.0] * 150)
    base = np.array([1.0] * 50 + [1.0] * 40 + [0.0] * 110)  # new loses 40 items: 20 points
    (c,) = compare_items(items(new, "mmlu"), items(base, "mmlu"), new_label="Q4_K_M",
                         baseline_label="F16")["comparisons"]
    lo, hi = -c["diff"]["ci"][1] * 100, -c["diff"]["ci"][0] * 100
    assert c["verdict"] == "worse"
    assert c["sentence"] == (f"Q4_K_M loses 20.0 points on mmlu vs F16 (95% CI {lo:.1f}–{hi:.1f}), "
                             "significant after Holm.")
    same = np.array([1.0, 0.0] * 50)
    flip = same.copy()
    flip[:6] = 1 - flip[:6]
    (ns,) = compare_items(items(same, "gsm8k", metric="exact_match", flt="strict-match"),
                          items(flip, "gsm8k", metric="exact_match", flt="strict-match"),
                          new_label="Q8_0", baseline_label="F16")["comparisons"]
    assert ns["verdict"] == "no significant difference"
    assert ns["sentence"].startswith("no significant difference on gsm8k exact_match (strict-match)")
    assert f"this n detects only ≥ {ns['mde_80'] * 100:.1f} points." in ns["sentence"]


def test_all_identical_answers_give_p_one_and_no_nan():
    vals = np.array([1, 0, 1, 1, 0, 0, 1] * 5, dtype=float)
    doc = strict_json(compare_items(items(vals), items(vals), new_label="n", baseline_label="b"))
    (c,) = doc["comparisons"]
    assert (c["test"]["b"], c["test"]["c"]) == (0, 0)
    assert c["test"]["p_value"] == 1.0 and c["p_adjusted"] == 1.0
    assert c["diff"]["mean"] == 0.0 and c["diff"]["se"] == 0.0 and c["diff"]["ci"] == [0.0, 0.0]
    assert c["diff"]["correlation"] == pytest.approx(1.0)
    assert c["verdict"] == "no significant difference"
    assert c["mde_80"] is None  # no spread in the differences: nothing to base power on
    assert doc["disagreements"] == []
    # Continuous metric, identical values: paired t is undefined in scipy (NaN); here p = 1.
    cont = np.linspace(0, 1, 9)
    (k,) = strict_json(compare_items(items(cont, metric="f1"), items(cont, metric="f1"), new_label="n",
                                     baseline_label="b"))["comparisons"]
    assert k["test"]["p_value"] == 1.0 and k["bootstrap"]["p_value"] == 1.0 and k["bootstrap"]["ci"] == [0.0, 0.0]


def test_single_item_and_constant_scores_are_reported_without_nan():
    (one,) = strict_json(compare_items(items([1.0]), items([0.0]), new_label="n", baseline_label="b"))["comparisons"]
    assert one["n"] == 1 and one["new"]["se"] is None and one["diff"]["se"] is None
    assert one["new"]["ci"] == pytest.approx(list(proportion_confint(1, 1, method="wilson")))
    assert one["test"]["p_value"] == 1.0  # one discordant pair
    assert one["verdict"] == "no significant difference"
    (cont,) = strict_json(compare_items(items([0.3], metric="f1"), items([0.2], metric="f1"), new_label="n",
                                        baseline_label="b"))["comparisons"]
    assert cont["p_value"] is None and cont["p_adjusted"] is None and cont["bootstrap"] is None
    assert cont["sentence"].startswith("too few paired items (n = 1)")
    # All ones on both sides (p = 1): Wilson keeps a sensible interval, correlation undefined → null.
    (ones,) = strict_json(compare_items(items([1.0] * 5), items([1.0] * 5), new_label="n",
                                        baseline_label="b"))["comparisons"]
    assert ones["new"]["ci"][1] == pytest.approx(1.0) and ones["new"]["ci"][0] < 1.0
    assert ones["diff"]["correlation"] is None


def test_non_binary_values_outside_unit_interval_use_metric_units():
    rng = np.random.default_rng(4)
    base = rng.normal(20, 5, 60)
    new = base - 3 + rng.normal(0, 1, 60)
    (c,) = compare_items(items(new, metric="bleu"), items(base, metric="bleu"), new_label="n",
                         baseline_label="b", n_boot=1000)["comparisons"]
    assert c["binary"] is False and c["verdict"] == "worse"
    assert "points" not in c["sentence"]
    assert c["sentence"].startswith(f"n loses {-c['diff']['mean']:.3g} on t bleu vs b (95% CI ")


def test_mismatched_item_sets_are_refused_with_counts():
    base = items([1, 0] * 50, hashes=[f"v1-{i}" for i in range(100)])
    new = items([1, 0] * 50, hashes=[f"v2-{i}" for i in range(100)])  # another task version: new doc hashes
    with pytest.raises(PosttrainError) as e:
        compare_items(new, base, new_label="n", baseline_label="b")
    assert "only 0 items match" in e.value.message and "100 only in new, 100 only in baseline" in e.value.message
    subset = items([1, 0] * 10)  # a --limit 20 run against a full one
    with pytest.raises(PosttrainError, match="only 20 items match"):
        compare_items(subset, items([1, 0] * 50), new_label="n", baseline_label="b")


def test_a_few_unmatched_items_are_counted_and_one_sided_tasks_skipped():
    base = items([1, 0, 1] * 20) + items([1] * 10, "only_base")
    new = items([1, 0, 1] * 19)  # three items missing on the new side
    doc = strict_json(compare_items(new, base, new_label="n", baseline_label="b"))
    (c,) = doc["comparisons"]
    assert (c["n"], c["n_only_new"], c["n_only_baseline"]) == (57, 0, 3)
    assert doc["skipped"] == [{"task": "only_base", "filter": "none", "metric": "acc", "n_only_new": 0,
                               "n_only_baseline": 10, "reason": "only in baseline", "new_label": "n",
                               "baseline_label": "b"}]
    # The terminal table says so too: beside n, and in a line under the table.
    from rich.console import Console

    from posttrain.compare import render_table

    console = Console(width=200, record=True)
    console.print(render_table(doc))
    text = console.export_text()
    assert "57 (+3 unpaired)" in text
    assert "0 item(s) only in n and 3 only in b are not paired and not counted" in text


def test_empty_sides_and_disjoint_tasks_are_clear_errors():
    with pytest.raises(PosttrainError, match="n has no per-item results"):
        compare_items([], items([1.0]), new_label="n", baseline_label="b")
    with pytest.raises(PosttrainError, match="share no"):
        compare_items(items([1.0], "x"), items([1.0], "y"), new_label="n", baseline_label="b")
    with pytest.raises(PosttrainError, match="both sides are labelled 'same'") as e:
        compare_items(items([1.0]), items([1.0]), new_label="same", baseline_label="same")
    assert "distinct labels" in e.value.remedy


def test_duplicate_documents_pair_in_doc_id_order():
    hashes = ["h"] * 4  # four identical documents (datasets do contain exact duplicates)
    (c,) = compare_items(items([1, 1, 0, 0], hashes=hashes), items([1, 1, 0, 0], hashes=hashes),
                         new_label="n", baseline_label="b")["comparisons"]
    assert c["n"] == 4 and c["test"]["b"] == c["test"]["c"] == 0


def test_disagreements_are_bounded_ordered_and_carry_context():
    new = np.zeros(200)
    base = np.ones(200)
    doc = compare_items(items(new), items(base), new_label="n", baseline_label="b")
    dis = doc["disagreements"]
    assert len(dis) == 50
    assert [d["doc_id"] for d in dis] == list(range(50))
    assert dis[0] == {"task": "t", "group": None, "doc_id": 0, "doc_hash": "t-0", "filter": "none",
                           "metric": "acc", "question": "question 0", "target": "A", "new_response": "C",
                           "baseline_response": "B", "new_value": 0.0, "baseline_value": 1.0,
                           "new_label": "n", "baseline_label": "b"}


def test_min_detectable_effect_and_items_needed_agree_with_statsmodels_power():
    sd, n = 0.3, 400
    mde = min_detectable_effect(sd, n)
    assert TTestPower().power(effect_size=mde / sd, nobs=n, alpha=0.05) == pytest.approx(0.8, abs=1e-6)
    need = items_needed(0.02, sd)
    assert TTestPower().power(effect_size=0.02 / sd, nobs=need, alpha=0.05) >= 0.8
    assert TTestPower().power(effect_size=0.02 / sd, nobs=need - 1, alpha=0.05) < 0.8
    assert items_needed(-0.02, sd) == need
    assert min_detectable_effect(0.0, 100) is None and min_detectable_effect(0.3, 1) is None
    with pytest.raises(PosttrainError):
        items_needed(0.02, 0.0)
    # The document's MDE is the same function of the observed SD of differences.
    (c,) = compare_items(items(NEW_BIN), items(BASE_BIN), new_label="n", baseline_label="b")["comparisons"]
    sd_d = float(np.std(NEW_BIN - BASE_BIN, ddof=1))
    assert c["mde_80"] == pytest.approx(min_detectable_effect(sd_d, NEW_BIN.size))


def test_bad_alpha_is_refused():
    with pytest.raises(PosttrainError, match="alpha"):
        compare_items(items([1.0]), items([1.0]), new_label="n", baseline_label="b", alpha=1.5)


def test_render_table_shows_every_comparison_and_sentence():
    doc = compare_family([("Q8_0", items(NEW_BIN), "F16", items(BASE_BIN)),
                          ("Q4_K_M", items(BASE_BIN), "F16", items(NEW_BIN))])
    console = Console(record=True, width=220)
    console.print(render_table(doc))
    text = console.export_text()
    assert "Q8_0 vs F16" in text and "Q4_K_M vs F16" in text
    for c in doc["comparisons"]:
        assert c["sentence"] in text
    assert f"{NEW_BIN.mean() * 100:.1f}" in text


def test_lower_is_better_metrics_get_the_verdict_the_right_way_round():
    rng = np.random.default_rng(8)
    base = rng.normal(12.0, 2.0, 80)
    new = base + 1.0 + rng.normal(0, 0.3, 80)  # perplexity went up: worse
    (c,) = compare_items(items(new, metric="word_perplexity"), items(base, metric="word_perplexity"),
                         new_label="Q4", baseline_label="F16", n_boot=500)["comparisons"]
    assert c["diff"]["mean"] > 0 and c["verdict"] == "worse"
    assert c["sentence"].startswith(f"Q4 is worse by {c['diff']['mean']:.3g} on t word_perplexity vs F16 (95% CI ")


def test_cluster_option_parsing():
    from posttrain.compare import parse_clusters

    assert parse_clusters("mmlu=subject, hellaswag=source_id") == {"mmlu": "subject", "hellaswag": "source_id"}
    assert parse_clusters("") == {}
    with pytest.raises(PosttrainError, match="bad --cluster entry 'mmlu'"):
        parse_clusters("mmlu")
