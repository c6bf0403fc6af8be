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
    assert "qwen3_moe carries over" in sentence and "mixtral does not carry over" in sentence


def test_tau_matches_scipy_and_noise_leaves_it_unresolved():
    a, b = pd.Series([1.0, 3.0, 2.0, 5.0, 4.0]), pd.Series([2.0, 1.0, 3.0, 4.0, 5.0])
    assert concordance.tau(a, b) == pytest.approx(sps.kendalltau(a, b).statistic)
    runs = suite({"harness": [1.0] * 5, "olmoe": [1.0] * 5}, noise=0.05)  # no real order: ties broken by noise
    row = concordance.pairs(runs, "val_loss").iloc[0]
    assert row["low95"] < 0 < row["high95"]
    assert "olmoe is unresolved" in concordance.carries_over(concordance.pairs(runs, "val_loss"))


def test_the_order_table_lists_each_familys_methods_best_first():
    runs = suite({"harness": [1.0, 2.0, 3.0, 4.0, 5.0], "olmoe": [5.0, 4.0, 3.0, 2.0, 1.0]}, noise=0.0)
    table = concordance.order(runs, "val_loss")
    assert table.loc["harness", 0].startswith("none") and table.loc["olmoe", 0].startswith("quantile")
