"""A sweep's report: every trial against the best one that meets the constraint, paired over
seeds; the flat optimum (the trials within the seed noise of the best) named and shaded."""

from __future__ import annotations

from typing import Iterator

import matplotlib.pyplot as plt
import pandas as pd

from harness import metric_registry
from harness.analysis import plots, stats


def sweep_constraint(trials: pd.DataFrame) -> tuple[str, float] | None:
    """(metric, max) of the sweep's constraint, as its trials stored it."""
    if "constraint_metric" not in trials or trials["constraint_metric"].dropna().empty:
        return None
    row = trials.dropna(subset=["constraint_metric"]).iloc[-1]
    return str(row["constraint_metric"]), float(row["constraint_max"])


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The best complete trial that meets the sweep's constraint, by its first objective."""
    objective = next((c for c in trials.columns if c.startswith("objective_")), None)
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[objective]) if objective else trials.iloc[:0]
    constraint = sweep_constraint(trials)
    if constraint and constraint[0] in done:
        done = done[done[constraint[0]] <= constraint[1]]
    if not len(done):
        return None
    better = getattr(metric_registry.get_metric(objective.removeprefix("objective_")), "better", None)
    return done.loc[done[objective].idxmax() if better == "max" else done[objective].idxmin()]


def flat_optimum(runs: pd.DataFrame, trials: pd.DataFrame) -> tuple[pd.Series | None, list[str]]:
    """(the best feasible trial, the labels of the trials within the paired noise of it): trials
    whose paired 95 % interval of the objective's difference to the best, over their common
    seeds, contains 0 (at least 2 common seeds), the best included."""
    best = best_trial(trials)
    metric = next((c.removeprefix("objective_") for c in trials.columns if c.startswith("objective_")), None)
    if best is None or metric not in runs:
        return best, []
    return best, stats.within_noise(stats.per_seed(runs[runs["status"] == "ok"], metric), best["label"])


def flat_sentence(trials: pd.DataFrame, best: pd.Series | None, flat: list[str]) -> str:
    if best is None:
        return "No complete trial meets the constraint: no best trial to compare with."
    params = [c for c in trials.columns if c.startswith(stats.CONFIG_PREFIXES)
              and pd.api.types.is_numeric_dtype(trials[c])]
    inside = trials[trials["label"].isin(flat)]
    ranges = "; ".join(f"{p} from {inside[p].min():.3g} to {inside[p].max():.3g}" for p in params)
    return (f"Best feasible trial: {best['label']}; every comparison below is paired against it. Flat optimum: "
            f"{len(flat)} trial(s) whose paired difference to it contains 0 ({ranges or 'no numeric parameter'}); "
            "among those the data cannot choose, so prefer the middle of the range.")


def sweep_figures(trials: pd.DataFrame, runs: pd.DataFrame) -> Iterator[tuple[str, plt.Figure, str]]:
    """A sweep's figures, one at a time: the search's history, the objective against each swept
    number (the flat optimum shaded), and the Pareto front of two objectives."""
    objectives = [c.removeprefix("objective_") for c in trials.columns if c.startswith("objective_")]
    params = [c for c in trials.columns if c.startswith(stats.CONFIG_PREFIXES)]
    numeric = [p for p in params if pd.api.types.is_numeric_dtype(trials[p])]
    categorical = [p for p in params if p not in numeric]
    constraint = sweep_constraint(trials)
    yield ("history", plots.sweep_history(trials, objectives[0], constraint),
           f"Convergence of the search: {objectives[0]} by trial, with the best so far"
           + (" among trials that meet the constraint." if constraint else "."))
    _, flat = flat_optimum(runs, trials)
    inside = trials[trials["label"].isin(flat)] if len(flat) > 1 else trials.iloc[:0]
    for param in numeric:
        band = (inside[param].min(), inside[param].max()) if len(inside) else None
        yield (f"objective_vs_{param.replace('.', '_')}",
               plots.sweep_objective(trials, param, objectives[0], categorical[0] if categorical else None, band),
               f"Where the best {param} lies; shaded: the flat optimum, the values whose trials are within "
               "the paired seed noise of the best feasible trial.")
    pareto_y = objectives[1] if len(objectives) > 1 else "maxvio_global"
    if pareto_y in trials:
        yield ("pareto", plots.sweep_pareto(trials, pareto_y, objectives[0], constraint),
               f"The trade-off between {objectives[0]} and {pareto_y}: trials on the red line are not beaten on both.")
