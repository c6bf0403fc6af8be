"""Concordance across architectures (issue 28, item 4): Kendall's tau of the methods' orders between
families, with intervals over seeds, on synthetic tables whose answer is known."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness.analysis import concordance

METHODS = ["none", "aux", "loss_free", "smebu", "quantile"]


def suite(orders: dict[str, list[float]], seeds=range(4), noise=0.01) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for family, values in orders.items():
        for seed in seeds:
            for method, value in zip(METHODS, values):
                rows.append({"variant": f"{method}[model.family={family}]" if family != "harness" else method,
                             "model.family": None if family == "harness" else family, "seed": seed, "status": "ok",
                             "val_loss": value + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_the_same_order_carries_over_and_a_reversed_one_does_not():
    base = [1.0, 2.0, 3.0, 4.0, 5.0]
    runs = suite({"harness": base, "qwen3_moe": [v + 0.5 for v in base], "mixtral": base[::-1]})
    pairs = concordance.pairs(runs, "val_loss").query("a == 'harness'").set_index("b")
    same, reversed_ = pairs.loc["qwen3_moe"], pairs.loc["mixtral"]
    assert same["tau"] == pytest.approx(1.0) and same["low95"] > 0 and same["methods"] == 5
    assert reversed_["tau"] == pytest.approx(-1.0) and reversed_["high95"] < 0
    sentence = concordance.carries_over(concordance.pairs(runs, "val_loss"))
    assert "qwen3_moe concordant" in sentence and "mixtral not shown" in sentence


def test_tau_matches_scipy_and_noise_is_not_shown_concordant():
    a, b = pd.Series([1.0, 3.0, 2.0, 5.0, 4.0]), pd.Series([2.0, 1.0, 3.0, 4.0, 5.0])
    assert concordance.tau(a, b) == pytest.approx(sps.kendalltau(a, b).statistic)
    runs = suite({"harness": [1.0] * 5, "olmoe": [1.0] * 5}, noise=0.05)  # no real order: ties broken by noise
    row = concordance.pairs(runs, "val_loss").iloc[0]
    assert row["low95"] < 0 < row["high95"]
    assert "olmoe not shown" in concordance.carries_over(concordance.pairs(runs, "val_loss"))


def test_tau_interval_stays_in_range_and_separated_variants_are_left_out():
    """Issue 32: t-intervals of tau on 2 df went past +1 (up to +1.34); an unbalanced control that is
    last everywhere made MaxVio pairs concordant by construction."""
    rng = np.random.default_rng(3)
    rows = []
    for family in ("harness", "olmoe"):
        for seed in range(3):
            for method, level in zip(METHODS, (3.0, 0.20, 0.21, 0.22, 0.23)):  # "none" is the unbalanced control
                rows.append({"variant": f"{method}[model.family={family}]" if family != "harness" else method,
                             "model.family": None if family == "harness" else family, "seed": seed,
                             "status": "ok", "maxvio_global": level * float(np.exp(rng.normal(0, 0.3)))})
    runs = pd.DataFrame(rows)
    kept = concordance.pairs(runs, "maxvio_global").iloc[0]
    every = concordance.pairs(runs, "maxvio_global", drop_separated=False).iloc[0]
    assert kept["left_out"] == "none" and kept["methods"] == 4 and every["methods"] == 5
    assert every["tau"] > kept["tau"]  # the separated control alone adds concordant pairs
    for row in (kept, every):
        assert -1 <= row["low95"] <= row["high95"] <= 1 and 0 <= row["p_permutation"] <= 1
    tau_b = concordance.tau_b(np.array([1.0, 3.0, 2.0, 5.0, 4.0]), np.array([[2.0, 1.0, 3.0, 4.0, 4.0]]))
    assert tau_b[0] == pytest.approx(sps.kendalltau([1, 3, 2, 5, 4], [2, 1, 3, 4, 4]).statistic)


def test_the_order_table_lists_each_familys_methods_best_first():
    runs = suite({"harness": [1.0, 2.0, 3.0, 4.0, 5.0], "olmoe": [5.0, 4.0, 3.0, 2.0, 1.0]}, noise=0.0)
    table = concordance.order(runs, "val_loss")
    assert table.loc["harness", 0].startswith("none") and table.loc["olmoe", 0].startswith("quantile")
