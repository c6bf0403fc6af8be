"""Every metric of a run row, declared once: name, label, unit, which way is better, whether it is
positive by nature, number format, and one line of meaning.

Each metric is registered next to the code that computes it (metrics.py, train.py,
throughput.py), with `register_metric`; the report's tables, the suite summary, the paired
statistics, the sweep objectives and the live log all read this registry instead of keeping
lists of their own. A family of columns (one per EP size, one per capacity factor) is one
registration with a pattern: `ep{N}_efficiency`.

    from harness.metric_registry import register_metric
    register_metric("maxvio_global", "MaxVio global", better="min", positive=True, summary=1,
                    meaning="n max_i F_i - 1 over the validation set, layer mean")
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

Better = Literal["min", "max"] | None


@dataclass(frozen=True)
class Metric:
    name: str  # the run-row column (a pattern with {N} for a family)
    label: str  # as tables and plots show it ({N} filled in for a family)
    better: Better = None  # which way is better; None: neither (a description, not a score)
    positive: bool = False  # positive by nature: intervals of its mean are taken on the log scale
    fmt: str = "{:.3f}"  # number format in tables
    unit: str = ""
    meaning: str = ""  # one line, for docs and tooltips
    summary: int | None = None  # position in the report's first table and the suite summary
    cost: int | None = None  # position in the report's "what imbalance costs" table
    objective: bool = False  # a sweep may optimise or constrain it
    live: Literal["train", "val"] | None = None  # logged live: with each step row, or each evaluation


METRICS: dict[str, Metric] = {}
FAMILIES: list[tuple[re.Pattern, Metric]] = []


def register_metric(name: str, label: str, **fields) -> Metric:
    """Declare a metric (or, with `{N}` in the name, a family of columns); a second declaration of
    one name is an error."""
    metric = Metric(name, label, **fields)
    if name in METRICS or any(m.name == name for _, m in FAMILIES):
        raise ValueError(f"metric {name!r} is already registered")
    if "{N}" in name:
        pattern = re.compile(re.escape(name).replace(r"\{N\}", r"([\d.]+)"))
        FAMILIES.append((pattern, metric))
    else:
        METRICS[name] = metric
    return metric


def _declared() -> None:
    """Import the modules that declare metrics (a consumer such as the report may not have)."""
    import harness.train  # noqa: F401  (imports metrics.py and throughput.py too)


def get_metric(column: str) -> Metric | None:
    """The declaration of a run-row column, a family's filled in; None for an undeclared column."""
    _declared()
    if column in METRICS:
        return METRICS[column]
    for pattern, metric in FAMILIES:
        if m := pattern.fullmatch(column):
            return replace(metric, name=column, label=metric.label.replace("{N}", m[1]))
    return None


def is_positive(column: str) -> bool:
    metric = get_metric(column)
    return bool(metric and metric.positive)


def summary_metrics() -> list[Metric]:
    """The report's first table and the suite summary, in order."""
    _declared()
    return sorted((m for m in METRICS.values() if m.summary is not None), key=lambda m: m.summary)


def cost_metrics(columns) -> list[Metric]:
    """The report's second table, as the runs have its columns: families by their number."""
    found = [get_metric(c) for c in columns]
    found = [m for m in found if m is not None and m.cost is not None]
    return sorted(found, key=lambda m: (m.cost, float(re.sub(r"[^\d.]", "", m.name) or 0), m.name))


def objectives() -> dict[str, str]:
    """Sweep objectives: metric -> Optuna direction."""
    _declared()
    return {m.name: "minimize" if m.better == "min" else "maximize" for m in METRICS.values() if m.objective}


def live_metrics(kind: Literal["train", "val"]) -> list[str]:
    _declared()
    return [m.name for m in METRICS.values() if m.live == kind]
