"""How the best bias rate moves with the run: the best u of each (steps, tokens per step) cell of
a transfer study, a power law fitted through those cells, and the flat optimum of a direct sweep.

A transfer study (experiments/rate_transfer.toml) runs one rate-driven controller over a grid of
rates at several run lengths T and tokens per step S, with several seeds. For each cell:

- the best rate for an objective: `val_loss` (lowest seed-mean validation loss among the rates
  whose seed-mean MaxVio_global is at most a cap) or `maxvio_time` (lowest seed-mean of the
  run's time-averaged MaxVio_batch, every logged step), refined between grid points by the
  parabola through the best rate and its two neighbours in log u. A best rate at the edge of the
  grid is only a bound: such cells are reported and left out of the fit.
- the law: ordinary least squares of log u* on log T (and log S when the study has more than
  one S): log u* = c + p log T + q log S, with t-intervals from the residuals. The square-root
  hypothesis says p = -1/2; the fit's 95 % interval of p either holds it or refutes it.

A direct sweep at a held-out length then checks the law: its flat optimum is the set of rates
whose paired val-loss difference to the best rate (over common seeds) has a 95 % interval that
contains 0; the prediction passes if it lies within the flat optimum's range.
"""

from __future__ import annotations

import math
import numpy as np
import pandas as pd

from harness.analysis import stats

OBJECTIVES = {"val_loss": "lowest val loss with MaxVio_global <= {cap:g}",
              "maxvio_time": "lowest time-averaged MaxVio_batch"}
RATE = "router.bias_rate"


def tokens_per_step(runs: pd.DataFrame) -> pd.Series:
    world = runs["world_size"] if "world_size" in runs else 1
    return (runs["train.batch_size"] * runs["train.grad_accum"] * runs["model.seq_len"] * world).astype(int)


def study_runs(runs: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """`runs` with the columns a study needs: steps, tokens_per_step and maxvio_time (the mean of
    the run's logged MaxVio_batch in `steps`, its steps table)."""
    runs = runs.assign(steps=runs["train.steps"].astype(int), tokens_per_step=tokens_per_step(runs))
    if len(steps) and {"run_id", "maxvio_batch"} <= set(steps):
        runs = runs.merge(steps.groupby("run_id")["maxvio_batch"].mean().rename("maxvio_time"),
                          left_on="run_id", right_index=True, how="left")
    else:
        runs = runs.assign(maxvio_time=math.nan)
    return runs


def is_study(runs: pd.DataFrame) -> bool:
    """At least two run lengths, each with at least three rates: enough for a best rate per length."""
    lengths = runs.groupby("train.steps")[RATE].nunique()
    return len(lengths) >= 2 and bool((lengths >= 3).all())


def vertex(x: np.ndarray, y: np.ndarray) -> float:
    """The minimum of the parabola through three points (x[1] when they do not curve upward)."""
    (x0, x1, x2), (y0, y1, y2) = x, y
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 ** 2 * (y0 - y1) + x1 ** 2 * (y2 - y0) + x0 ** 2 * (y1 - y2)) / denom
    if a <= 0:
        return float(x1)
    return float(np.clip(-b / (2 * a), x0, x2))


def cell_optimum(cell: pd.DataFrame, objective: str, cap: float) -> dict:
    """The best rate of one (steps, tokens per step) cell; see the module docstring."""
    metric = "val_loss" if objective == "val_loss" else "maxvio_time"
    means = cell.groupby(RATE)[[metric, "maxvio_global"]].mean().sort_index()
    seeds = int(cell.groupby(RATE)["seed"].nunique().min())
    if objective == "val_loss":
        means = means[means["maxvio_global"] <= cap]
    out = {"rates": len(means), "seeds": seeds, "rate": math.nan, "at_edge": False, "value": math.nan}
    if means.empty:
        return out
    y = means[metric].to_numpy(float)
    i = int(np.argmin(y))
    out["value"] = float(y[i])
    grid = np.log(means.index.to_numpy(float))
    # NOTE: the edge of the feasible rates counts: past it the cap, not the objective, decides
    if i == 0 or i == len(y) - 1:
        out.update(rate=float(means.index[i]), at_edge=True)
    else:
        out["rate"] = math.exp(vertex(grid[i - 1:i + 2], y[i - 1:i + 2]))
    return out


def best_rates(runs: pd.DataFrame, objective: str, cap: float) -> pd.DataFrame:
    """One row per (steps, tokens_per_step) cell: its best rate for `objective` and whether it is at an edge."""
    rows = [{"steps": steps, "tokens_per_step": tps, **cell_optimum(cell, objective, cap)}
            for (steps, tps), cell in runs.groupby(["steps", "tokens_per_step"])]
    return pd.DataFrame(rows)


def fit_law(cells: pd.DataFrame) -> dict:
    """log u* = c + p log T (+ q log S) by least squares over the cells inside the grid."""
    used = cells[~cells["at_edge"] & cells["rate"].notna()]
    terms = ["steps"] + (["tokens_per_step"] if used["tokens_per_step"].nunique() > 1 else [])
    x = np.column_stack([np.ones(len(used))] + [np.log(used[t].to_numpy(float)) for t in terms])
    y = np.log(used["rate"].to_numpy(float))
    dof = len(used) - x.shape[1]
    if dof < 1:
        raise ValueError(f"{len(used)} cell(s) with a best rate inside the rate grid: too few to fit "
                         f"{x.shape[1]} coefficients with an interval (widen the grid or add lengths)")
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    sigma2 = float(resid @ resid) / dof
    cov = sigma2 * np.linalg.inv(x.T @ x)
    t = stats.t_quantile(0.975, dof)
    se = np.sqrt(np.diag(cov))
    law = {"terms": terms, "coef": coef, "cov": cov, "t": t, "dof": dof, "cells": len(used),
           "residual_sd": math.sqrt(sigma2)}
    for name, key in zip(terms, ("p", "q")):
        j = terms.index(name) + 1
        law[key] = (float(coef[j]), float(coef[j] - t * se[j]), float(coef[j] + t * se[j]))
    return law


def predict(law: dict, steps: int, tokens: int | None) -> tuple[float, float, float]:
    """The law's u* for a target, with the 95 % confidence interval of the fitted line there."""
    x0 = [1.0, math.log(steps)]
    if "tokens_per_step" in law["terms"]:
        if tokens is None:
            raise ValueError("the study varied tokens per step: give the target's --tokens-per-step")
        x0.append(math.log(tokens))
    x0 = np.array(x0)
    mean = float(x0 @ law["coef"])
    half = law["t"] * math.sqrt(float(x0 @ law["cov"] @ x0))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def flat_optimum(runs: pd.DataFrame, metric: str = "val_loss") -> tuple[float, list[float]]:
    """(the rate with the lowest seed-mean `metric`, the rates whose paired 95 % interval of the
    difference to it contains 0, the best included) of a direct sweep over rates."""
    table = stats.per_seed(runs, metric, columns=RATE)
    best = float(table.mean().idxmin())
    return best, sorted(float(rate) for rate in stats.within_noise(table, best))


def settle_fraction(runs: pd.DataFrame, rate: float, steps: int, tokens: int | None, cap: float = 0.3) -> float:
    """The expected settle fraction (settle step / steps) of a run at `rate` for `steps` steps:
    least squares of log(settle fraction) on log u, log T (and log S where the study varied it)
    over the study's runs that balanced (MaxVio_global <= cap: a run that never balances "settles"
    early at a high level, which says nothing about when balance comes), evaluated at the target."""
    data = runs.dropna(subset=["settle_step"])
    data = data[(data["settle_step"] > 0) & (data[RATE] > 0) & (data["maxvio_global"] <= cap)]
    terms = [np.log(data[RATE].to_numpy(float)), np.log(data["steps"].to_numpy(float))]
    at = [math.log(rate), math.log(steps)]
    if data["tokens_per_step"].nunique() > 1 and tokens is not None:
        terms.append(np.log(data["tokens_per_step"].to_numpy(float)))
        at.append(math.log(tokens))
    x = np.column_stack([np.ones(len(data))] + terms)
    coef, *_ = np.linalg.lstsq(x, np.log(data["settle_step"].to_numpy(float) / data["steps"].to_numpy(float)),
                               rcond=None)
    return float(min(1.0, math.exp(float(np.array([1.0] + at) @ coef))))
