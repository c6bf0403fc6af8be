"""One declaration per metric (issue 18), read by the report, the suite summary, the paired
statistics, the sweep objectives and the live log."""

import dataclasses

import pandas as pd
import pytest

from harness import metric_registry
from harness.analysis import stats
from harness.analysis.report import summary as report
from harness.metric_registry import summary_columns
from harness.metric_registry import get_metric, register_metric


@pytest.fixture
def a_new_metric():
    """A metric declared the way a new method would declare its own, removed afterwards."""
    metric = register_metric("my_score", "my score", better="max", positive=True, summary=9, cost=9,
                             objective=True, live="val", fmt="{:.1f}", meaning="a test's own metric")
    yield metric
    del metric_registry.METRICS["my_score"]


def runs_with(column: str) -> pd.DataFrame:
    return pd.DataFrame({"variant": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "status": "ok", "baseline": "a",
                         "val_loss": [1.0, 1.1, 1.2, 1.05, 1.16, 1.24], "maxvio_global": [0.2] * 6,
                         column: [10.0, 11.0, 12.0, 20.0, 21.0, 22.0]})


def test_a_declared_metric_reaches_every_consumer(a_new_metric):
    from harness.suites.sweepfile import parse_objective

    runs = runs_with("my_score")
    assert "my score" in report.summary_table(runs).columns  # the report's first table
    assert report.summary_table(runs).loc["b", "my score"].startswith("**21.0 [")  # better = max, its format
    assert "my score" in report.summary_table(runs, report.cost_metrics_spec(runs.columns)).columns
    assert "my score" in set(report.paired_table(runs)["metric"])  # paired statistics
    assert "my_score" in summary_columns()  # the suite summary and the sweep's stored means
    assert parse_objective({"metrics": ["my_score"]}, "s.toml")[0] == ["my_score"]  # a sweep objective
    assert "my_score" in metric_registry.live_metrics("val")  # the live log
    assert stats.is_positive_metric("my_score")  # log-scale intervals


def test_series_fill_in_their_number():
    assert get_metric("ep8_efficiency").label == "EP8 efficiency"
    assert get_metric("drop_frac_cf1.25").label == "drops at c=1.25"
    assert get_metric("ep8_imbalance").positive and get_metric("no_such_column") is None


def test_a_metric_is_declared_once():
    with pytest.raises(ValueError, match="metric 'val_loss' is already registered"):
        register_metric("val_loss", "again")


def test_every_summary_and_cost_metric_says_what_it_is():
    declared = [*metric_registry.METRICS.values(), *(m for _, m in metric_registry.SERIES)]
    for metric in declared:
        assert metric.label and metric.fmt.format(1.0)
        assert metric.better in (None, "min", "max")
    for metric in metric_registry.summary_metrics():
        assert dataclasses.replace(metric).meaning or metric.name == "tokens_per_s", metric.name
