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
  one S): log u* = c + p log T + q log S, through the cells' seed-mean optima.

Uncertainty is at the level of the seed, the unit that is replicated: every cell shares seeds 0..n-1
(their initialisation and data order), so its cells are not independent and the residuals of one
pooled fit understate it. The law is also fitted to each seed's own cell optima, and a coefficient's
95 % interval is the pooled estimate -/+ t_{0.975, n-1} sd(per-seed estimates) / sqrt(n). A target's
u* carries two intervals: the law's own at the target (from the per-seed predictions there), and a
prediction interval for one new run's best rate, which adds the scatter of a single seed's cell
optimum about the line: exp(log u* -/+ t_{0.975, n-1} sqrt(se_line^2 + s_cell^2)). How much the answer
hangs on the per-cell interpolant is shown by refitting with each of INTERPOLANTS. The square-root
hypothesis says p = -1/2; the seed-level interval of p either holds it or refutes it.

A direct sweep at a held-out length then checks the law: its own optimum, found per seed with the
same interpolant, with a seed-level 95 % interval; the check compares the prediction interval with
it, and says whether the sweep could tell the fitted law from the square-root law at all (whether
the square-root extrapolation from the longest measured cell falls inside it too). Its flat
optimum (the rates whose paired difference to the best, over common seeds, contains 0) is shown too.
"""

from __future__ import annotations

import math
import numpy as np
import pandas as pd

from harness.analysis import stats
from harness.metric_registry import BALANCED_MAXVIO

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


def quadratic5(x: np.ndarray, y: np.ndarray, i: int) -> float:
    """The minimum of the least-squares quadratic through the (up to) 5 points around index i, in
    the range of those points (the middle point where they do not curve upward)."""
    lo, hi = max(0, i - 2), min(len(x), i + 3)
    a, b, _ = np.polyfit(x[lo:hi], y[lo:hi], 2)
    return float(np.clip(-b / (2 * a), x[lo], x[hi - 1])) if a > 0 else float(x[i])


def inverse(x: np.ndarray, y: np.ndarray, i: int) -> float:
    """The minimum of y = a / u + b u + c (least squares over every point, u = exp(x)): u = sqrt(a / b),
    in the grid's range; the best point where a or b is not positive. The shape of the sign rule's
    dynamics: an unbalanced phase that shrinks as 1/u, a steady jitter that grows as u."""
    u = np.exp(x)
    (a, b, _), *_ = np.linalg.lstsq(np.column_stack([1 / u, u, np.ones_like(u)]), y, rcond=None)
    return float(np.clip(0.5 * math.log(a / b), x[0], x[-1])) if a > 0 and b > 0 else float(x[i])


INTERPOLANTS = {  # a cell's best rate between its grid points, in log u (module docstring)
    "parabola through 3 points": lambda x, y, i: vertex(x[i - 1:i + 2], y[i - 1:i + 2]),
    "least-squares quadratic over 5 points": quadratic5,
    "a/u + b u + c": inverse,
}
DEFAULT_INTERPOLANT = "parabola through 3 points"


def cell_optimum(cell: pd.DataFrame, objective: str, cap: float, interpolant: str = DEFAULT_INTERPOLANT) -> dict:
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
        out["rate"] = math.exp(INTERPOLANTS[interpolant](grid, y, i))
    return out


def best_rates(runs: pd.DataFrame, objective: str, cap: float, interpolant: str = DEFAULT_INTERPOLANT) -> pd.DataFrame:
    """One row per (steps, tokens_per_step) cell: its best rate for `objective` and whether it is at an edge."""
    rows = [{"steps": steps, "tokens_per_step": tps, **cell_optimum(cell, objective, cap, interpolant)}
            for (steps, tps), cell in runs.groupby(["steps", "tokens_per_step"])]
    return pd.DataFrame(rows)


def fit_law(cells: pd.DataFrame, terms: list[str] | None = None) -> dict:
    """log u* = c + p log T (+ q log S) by least squares over the cells inside the grid (`terms`: the
    regressors, by default log S only where the cells vary it)."""
    used = cells[~cells["at_edge"] & cells["rate"].notna()]
    terms = terms or ["steps"] + (["tokens_per_step"] if used["tokens_per_step"].nunique() > 1 else [])
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


def design(law: dict, steps: float, tokens: float | None) -> np.ndarray:
    """The law's regressors (1, log T[, log S]) at a target."""
    x0 = [1.0, math.log(steps)]
    if "tokens_per_step" in law["terms"]:
        if tokens is None:
            raise ValueError("the study varied tokens per step: give the target's --tokens-per-step")
        x0.append(math.log(tokens))
    return np.array(x0)


def predict(law: dict, steps: int, tokens: int | None) -> tuple[float, float, float]:
    """The pooled line's u* for a target, with that line's residual-based 95 % interval (which treats
    the cells as independent: `seed_level` gives the interval to quote)."""
    x0 = design(law, steps, tokens)
    mean = float(x0 @ law["coef"])
    half = law["t"] * math.sqrt(float(x0 @ law["cov"] @ x0))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def seed_level(runs: pd.DataFrame, objective: str, cap: float, interpolant: str = DEFAULT_INTERPOLANT) -> dict:
    """The law through the seed-mean cell optima, refitted on each seed's own optima: per seed its
    coefficients and its cells' deviations from the pooled line (module docstring)."""
    law = fit_law(best_rates(runs, objective, cap, interpolant))
    fits, deviations = {}, []
    for seed, part in runs.groupby("seed"):
        cells = best_rates(part, objective, cap, interpolant)
        try:
            mine = fit_law(cells, law["terms"])
        except (ValueError, np.linalg.LinAlgError):  # too few cells inside the grid for this seed alone
            continue
        fits[seed] = mine["coef"]
        inside = cells[~cells["at_edge"] & cells["rate"].notna()]
        line = np.array([design(law, s, k) @ law["coef"] for s, k in zip(inside["steps"], inside["tokens_per_step"])])
        deviations += list(np.log(inside["rate"].to_numpy(float)) - line)
    out = {"law": law, "seed_coef": fits, "deviations": np.array(deviations), "seeds": len(fits)}
    for key, j in (("c", 0), ("p", 1), ("q", 2)):
        if j < len(law["coef"]):
            out[key] = coefficient(law["coef"][j], [c[j] for c in fits.values()])
    return out


def coefficient(pooled: float, per_seed: list[float]) -> tuple[float, float, float]:
    """(the pooled estimate, its seed-level 95 % interval): pooled -/+ t_{n-1} sd(per seed) / sqrt(n)."""
    if len(per_seed) < 2:
        return float(pooled), math.nan, math.nan
    half = stats.t975(len(per_seed)) * float(np.std(per_seed, ddof=1)) / math.sqrt(len(per_seed))
    return float(pooled), float(pooled - half), float(pooled + half)


def seed_prediction(fit: dict, steps: int, tokens: int | None) -> dict:
    """The target's u*, the law's seed-level 95 % interval there, and the prediction interval for
    one new run's best rate (module docstring)."""
    x0 = design(fit["law"], steps, tokens)
    centre = float(x0 @ fit["law"]["coef"])
    out = {"rate": math.exp(centre), "low": math.nan, "high": math.nan, "pred_low": math.nan, "pred_high": math.nan}
    n = fit["seeds"]
    if n < 2:
        return out
    per_seed = [float(x0 @ c) for c in fit["seed_coef"].values()]
    se_line = float(np.std(per_seed, ddof=1)) / math.sqrt(n)
    scatter = float(np.sqrt(np.mean(fit["deviations"] ** 2))) if len(fit["deviations"]) else 0.0
    t = stats.t975(n)
    out.update(low=math.exp(centre - t * se_line), high=math.exp(centre + t * se_line),
               pred_low=math.exp(centre - t * math.hypot(se_line, scatter)),
               pred_high=math.exp(centre + t * math.hypot(se_line, scatter)))
    return out


def interpolant_spread(runs: pd.DataFrame, objective: str, cap: float, steps: int, tokens: int | None) -> dict:
    """The target's u* under each per-cell interpolant (NaN where one leaves too few cells to fit)."""
    out = {}
    for name in INTERPOLANTS:
        try:
            out[name] = predict(fit_law(best_rates(runs, objective, cap, name)), steps, tokens)[0]
        except ValueError:
            out[name] = math.nan
    return out


def sweep_optimum(runs: pd.DataFrame, metric: str) -> dict:
    """A direct sweep's own best rate: the optimum of the seed-mean curve (the default interpolant),
    with the seed-level 95 % interval of log u* from each seed's own optimum."""
    def best(part):
        means = part.groupby(RATE)[metric].mean().sort_index()
        y, grid = means.to_numpy(float), np.log(means.index.to_numpy(float))
        i = int(np.argmin(y))
        return math.exp(grid[i] if i in (0, len(y) - 1) else INTERPOLANTS[DEFAULT_INTERPOLANT](grid, y, i))

    per_seed = [math.log(best(part)) for _, part in runs.groupby("seed")]
    centre, low, high = coefficient(math.log(best(runs)), per_seed)
    return {"rate": math.exp(centre), "low": math.exp(low), "high": math.exp(high), "seeds": len(per_seed)}


def flat_optimum(runs: pd.DataFrame, metric: str = "val_loss") -> tuple[float, list[float]]:
    """(the rate with the lowest seed-mean `metric`, the rates whose paired 95 % interval of the
    difference to it contains 0, the best included) of a direct sweep over rates."""
    table = stats.per_seed(runs, metric, columns=RATE)
    best = float(table.mean().idxmin())
    return best, sorted(float(rate) for rate in stats.within_noise(table, best))


def settle_fraction(runs: pd.DataFrame, rate: float, steps: int, tokens: int | None,
                    cap: float = BALANCED_MAXVIO) -> float:
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
