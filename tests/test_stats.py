"""Statistics of results: config groups and paired comparisons, checked against scipy and by hand."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness.analysis import stats


def test_paired_interval_equals_scipy_ttest_rel():
    x = pd.Series([1.31, 1.42, 1.37, 1.29], index=[0, 1, 2, 3])
    base = pd.Series([1.30, 1.38, 1.36, 1.25, 9.9], index=[0, 1, 2, 3, 4])  # seed 4 has no partner
    out = stats.paired_difference(x, base)
    ci = sps.ttest_rel(x.to_numpy(), base.iloc[:4].to_numpy()).confidence_interval(0.95)
    assert out["n"] == 4
    assert out["diff"] == pytest.approx(0.025)
    assert (out["low"], out["high"]) == pytest.approx((ci.low, ci.high))


def test_seeds_needed_by_hand():
    # sd 0.02, diff 0.01 (effect 0.5): the paired t-test's power, by the noncentral t, reaches 0.8 at n
    def power(k):
        crit, nc = sps.t.ppf(0.975, k - 1), 0.5 * math.sqrt(k)
        return sps.nct.sf(crit, k - 1, nc) + sps.nct.cdf(-crit, k - 1, nc)

    n = int(stats.seeds_needed(0.01, 0.02))
    assert power(n) >= 0.8 > power(n - 1)
    assert n == 34
    assert stats.seeds_needed(0.0, 0.02) == math.inf and stats.seeds_needed(0.5, 0.0) == 2
    assert math.isnan(stats.seeds_needed(0.0, 0.0))  # identical in every seed: nothing to resolve


def test_positive_metric_interval_never_goes_below_zero():
    values = [0.05, 0.9]  # two seeds, very different: the plain t-interval would reach -5
    mean, low, high = stats.mean_interval(values, positive=True)
    plain = stats.mean_interval(values, positive=False)
    assert plain[1] < 0 < low < mean < high
    factor = math.exp(sps.t.ppf(0.975, 1) * np.std(np.log(values), ddof=1) / math.sqrt(2))
    assert (low, high) == pytest.approx((mean / factor, mean * factor))


def test_one_label_over_two_configs_becomes_two_named_groups():
    runs = pd.DataFrame({"variant": ["loss_free"] * 4 + ["softmax_topk"] * 4, "seed": [0, 1] * 4,
                         "config_id": ["A", "A", "B", "B", "C", "C", "D", "D"],
                         "train.steps": [40, 40, 20, 20, 40, 40, 20, 20], "train.lr": 3e-3,
                         "val_loss": [1.0, 1.1, 2.0, 2.1, 1.2, 1.3, 2.2, 2.3]})
    grouped = stats.with_groups(runs)
    assert sorted(set(grouped["variant"])) == ["loss_free [train.steps=20]", "loss_free [train.steps=40]",
                                               "softmax_topk [train.steps=20]", "softmax_topk [train.steps=40]"]
    pairs = stats.baseline_groups(grouped, "softmax_topk")
    assert pairs["loss_free [train.steps=20]"] == "softmax_topk [train.steps=20]"
    assert pairs["loss_free [train.steps=40]"] == "softmax_topk [train.steps=40]"
    table = stats.comparison(grouped, ["val_loss"], "softmax_topk").set_index("variant")
    assert table.loc["loss_free [train.steps=20]", "mean"] == pytest.approx(2.05)  # never mixed with 40 steps
    assert table.loc["loss_free [train.steps=20]", "paired_diff"] == pytest.approx(-0.2)


def test_a_grid_point_meets_the_baseline_at_the_same_point():
    # a [grid] writes the point into the variant name: "loss_free[model.family=olmoe]"
    families = ["harness", "olmoe"]
    runs = pd.DataFrame([{"variant": f"{label}[model.family={f}]", "seed": seed, "config_id": f"{label}{f}",
                          "val_loss": 1.0 + (label == "loss_free") * 0.1 + (f == "olmoe") + seed * 0.01}
                         for label in ["sigmoid_topk", "loss_free"] for f in families for seed in [0, 1]])
    grouped = stats.with_groups(runs)
    pairs = stats.baseline_groups(grouped, "sigmoid_topk")
    for f in families:
        assert pairs[f"loss_free[model.family={f}]"] == f"sigmoid_topk[model.family={f}]"
    table = stats.comparison(grouped, ["val_loss"], "sigmoid_topk").set_index("variant")
    assert table.loc["loss_free[model.family=olmoe]", "paired_diff"] == pytest.approx(0.1)
