"""Every metric of a run row, declared once: name, label, unit, which way is better, whether it is
positive by nature, number format, and one line of meaning.

The bottom layer of the package: it imports nothing of the harness, so the report, the suite
summary, the paired statistics, the sweep objectives and the live log read it without pulling
in the trainer or torch. The built-in columns are declared at the end of this file, grouped by
the engine module that computes them; a plugin declares its own with `register_metric`. A series
of columns (one per EP size, one per capacity factor) is one registration with a pattern:
`ep{N}_efficiency`.

    from harness.metric_registry import register_metric
    register_metric("my_score", "my score", better="max", summary=9, meaning="what it measures")
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace
from typing import Literal

Better = Literal["min", "max"] | None

# NOTE: MaxVio_global at or below which a run counts as balanced: the cap of `moe-harness rate`'s
# val-loss objective and of the transfer study's figure (the shipped bias-rate sweep uses it too)
BALANCED_MAXVIO = 0.3


@dataclass(frozen=True)
class Metric:
    name: str  # the run-row column (a pattern with {N} for a series)
    label: str  # as tables and plots show it ({N} filled in for a series)
    better: Better = None  # which way is better; None: neither (a description, not a score)
    positive: bool = False  # positive by nature: intervals of its mean are taken on the log scale
    log_scale: bool = False  # skewed: paired comparisons, TOST and sequential seeds work on log ratios
    fmt: str = "{:.3f}"  # number format in tables
    unit: str = ""
    meaning: str = ""  # one line, for docs and tooltips
    summary: int | None = None  # position in the report's first table and the suite summary
    cost: int | None = None  # position in the report's "what imbalance costs" table
    objective: bool = False  # a sweep may optimise or constrain it
    live: Literal["train", "val"] | None = None  # logged live: with each step row, or each evaluation


METRICS: dict[str, Metric] = {}
SERIES: list[tuple[re.Pattern, Metric]] = []
ORIGINS: dict[str, str] = {}  # metric name -> the file that declared it


def _caller_file() -> str:
    """The file of the code that called register_metric."""
    frame = sys._getframe(2)
    return frame.f_code.co_filename if frame else "?"


def register_metric(name: str, label: str, **fields) -> Metric:
    """Declare a metric (or, with `{N}` in the name, a numbered series of columns); a second declaration of
    one name is an error."""
    metric = Metric(name, label, **fields)
    if name in METRICS or any(m.name == name for _, m in SERIES):
        raise ValueError(f"metric {name!r} is already registered (by {ORIGINS.get(name, '?')}); choose another name")
    ORIGINS[name] = _caller_file()
    if "{N}" in name:
        pattern = re.compile(re.escape(name).replace(r"\{N\}", r"([\d.]+)"))
        SERIES.append((pattern, metric))
    else:
        METRICS[name] = metric
    return metric


def get_metric(column: str) -> Metric | None:
    """The declaration of a run-row column, a series' filled in; None for an undeclared column."""
    if column in METRICS:
        return METRICS[column]
    for pattern, metric in SERIES:
        if m := pattern.fullmatch(column):
            return replace(metric, name=column, label=metric.label.replace("{N}", m[1]))
    return None


def is_positive(column: str) -> bool:
    metric = get_metric(column)
    return bool(metric and metric.positive)


def is_log_scale(column: str) -> bool:
    metric = get_metric(column)
    return bool(metric and metric.log_scale)


def summary_metrics() -> list[Metric]:
    """The report's first table and the suite summary, in order."""
    return sorted((m for m in METRICS.values() if m.summary is not None), key=lambda m: m.summary)


def cost_metrics(columns) -> list[Metric]:
    """The report's second table, as the runs have its columns: series by their number."""
    found = [get_metric(c) for c in columns]
    found = [m for m in found if m is not None and m.cost is not None]
    return sorted(found, key=lambda m: (m.cost, float(re.sub(r"[^\d.]", "", m.name) or 0), m.name))


def objectives() -> dict[str, str]:
    """Sweep objectives: metric -> Optuna direction."""
    return {m.name: "minimize" if m.better == "min" else "maximize" for m in METRICS.values() if m.objective}


def summary_columns() -> list[str]:
    """The metrics a suite's summary prints and a sweep's trials store, in order."""
    return [m.name for m in summary_metrics()]


def live_metrics(kind: Literal["train", "val"]) -> list[str]:
    return [m.name for m in METRICS.values() if m.live == kind]


# -- the built-in columns, in the order the run row computes them -----------------------------------

# load metrics (engine/metrics.py)
register_metric("maxvio_global", "MaxVio global", better="min", positive=True, log_scale=True, summary=1,
                objective=True,
                live="val",
                meaning="n max_i F_i - 1 over the validation set, layer mean (0 balanced, n - 1 collapsed)")
register_metric("maxvio_global_worst", "MaxVio global, worst layer", better="min", positive=True, log_scale=True)
register_metric("maxvio_batch", "MaxVio batch", better="min", positive=True, log_scale=True, summary=2, objective=True,
                live="train",
                meaning="MaxVio of each training step's tokens, layer mean, second half of training")
register_metric("maxvio_batch_worst", "MaxVio batch, worst layer", better="min", positive=True, log_scale=True)
register_metric("maxvio_compute", "MaxVio of a rank's micro-batch", better="min", positive=True, log_scale=True,
                meaning="MaxVio of the computation batch an expert-parallel system pays for")
register_metric("mean_k", "experts/token", fmt="{:.2f}", summary=3, live="train",
                meaning="experts per (layer, token); k for top-k, varies for threshold and expert choice")
register_metric("cv_global", "CV of expert load", better="min", positive=True)
register_metric("dead_experts", "dead experts", better="min", meaning="share of experts below 1 % of the mean load")
register_metric("entropy_global", "load entropy / log n", better="max")
register_metric("ep{N}_imbalance", "EP{N} imbalance", better="min", positive=True,
                meaning="busiest of N devices over the mean, minus 1, experts placed contiguously")
register_metric("ep{N}_efficiency", "EP{N} efficiency", better="max", positive=True, cost=0,
                meaning="mean over busiest device load: the share of expert compute a synchronous step uses")
register_metric("drop_frac_cf{N}", "drops at c={N}", better="min", positive=True, cost=1,
                meaning="share of assignments a capacity-c system would drop")
register_metric("drop_frac", "dropped (own capacity)", positive=True, cost=2,
                meaning="share of assignments the run's own capacity factor dropped in training")
register_metric("specialisation", "specialisation (NMI)", positive=True, cost=3,
                meaning="normalised mutual information of expert and token domain, layer mean", live="val")
register_metric("k_loss_corr", "k-loss Spearman", fmt="{:+.3f}", cost=5, live="val",
                meaning="Spearman's rho of a token's experts and its loss (variable-k routers)")

# controller dynamics (engine/dynamics.py)
register_metric("settle_step", "settle step", better="min", fmt="{:.0f}", unit="steps",
                meaning="first step after which MaxVio_batch stays within final +/- (0.25 final + 0.05)")
register_metric("maxvio_batch_sd", "MaxVio batch sd", better="min", positive=True,
                meaning="spread of MaxVio_batch over the second half of training")
register_metric("bias_spread", "bias spread", fmt="{:.4f}", meaning="max - min of the final bias, layer mean")
register_metric("bias_travel", "bias travel / u", fmt="{:.0f}", unit="steps",
                meaning="bias_spread over the bias rate u")
register_metric("bias_flip_share", "bias sign flips", better="min", meaning="share of second-half bias updates that "
                "reverse the expert's previous one")
register_metric("controller_speed", "controller speed", fmt="{:.3g}",
                meaning="the controller's per-step speed: u for a "
                "rate-driven rule, 1 - m for an EMA (controller_speed_of names it)")
register_metric("bias_drift", "bias drift / u", better="min", fmt="{:.1f}",
                meaning="RMS bias change over the last quarter, "
                "in units of u")

# steady state (steady_state.py)
register_metric("maxvio_trend", "MaxVio trend /100 steps", fmt="{:+.3f}",
                meaning="slope of log MaxVio_batch over the last quarter, per 100 steps (0: settled)")
register_metric("maxvio_batch_tail", "MaxVio batch, last 20 %", better="min", positive=True, log_scale=True,
                meaning="mean MaxVio_batch over the last 20 % of the steps")
register_metric("settled", "settled", meaning="the last quarter's MaxVio trend interval contains 0")

# speed (engine/throughput.py)
register_metric("throughput_ratio", "speed / dense", better="max", positive=True, fmt="{:.2f}", summary=4,
                meaning="training tokens/s over the dense twin of equal active width, median of probes through the run")
register_metric("tokens_per_s", "tokens/s", better="max", positive=True, fmt="{:,.0f}", summary=5, objective=True,
                live="train", unit="tokens/s")
register_metric("dense_tokens_per_s", "dense tokens/s", better="max", positive=True, fmt="{:,.0f}", unit="tokens/s")

# losses (engine/train.py)
register_metric("val_loss", "val loss", better="min", summary=0, objective=True, live="val", unit="nats/token",
                meaning="cross-entropy on the fixed validation set")
register_metric("val_bpb", "val bits/byte", better="min", objective=True, unit="bits/byte",
                meaning="validation loss in bits per byte of text: compares tokenizers")
register_metric("train_loss", "train loss", better="min", objective=True, live="train", unit="nats/token")
register_metric("aux_loss", "aux loss", live="train",
                meaning="the step's auxiliary and z losses, as added to the LM loss")
register_metric("lr", "learning rate", fmt="{:.2e}", live="train")
register_metric("val_loss_causal", "val loss, causal top-k", better="min", cost=4, live="val", unit="nats/token",
                meaning="validation loss with a causal top-k of the same scores (non-causal rules)")
