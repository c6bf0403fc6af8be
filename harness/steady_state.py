"""Has a run's balance settled? The steady-state columns of every run (docs/methods.md, "Steady state").

    maxvio_trend            the slope of log MaxVio_batch over the last quarter of the steps, per
                            100 steps (OLS on the step, Newey-West standard errors: the steps of
                            one run are autocorrelated), with its 95 % interval
    maxvio_trend_low/high   that interval
    maxvio_batch_tail       the mean MaxVio_batch over the last 20 % of the steps
    settled                 whether the interval contains 0: the balance is no longer measurably
                            moving (a still-falling MaxVio_global of an aux front would make a
                            settled controller look worse than it will be)
    settle_step             (`settle_step`, recorded by the bias dynamics) the earliest start, on a
                            grid of every 5 % of the steps up to the last quarter's, from which the
                            same trend test finds no trend to the end (and none over the last quarter):
                            NaN where the last quarter is still moving

The bottom layer: numpy and statsmodels only, so the trainer records these at the end of a run
and the analysis computes them for runs written before they existed, from the step rows.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import statsmodels.api as sm

TAIL_TREND = 0.25  # the share of the steps the trend is fitted over
TAIL_MEAN = 0.20  # the share of the steps the tail mean is taken over
MIN_POINTS = 4  # fewer points in the last quarter: no trend (NaN, not settled)
COLUMNS = ("maxvio_trend", "maxvio_trend_low", "maxvio_trend_high", "maxvio_batch_tail", "settled")


def steady_state(steps, maxvio_batch) -> dict:
    """The steady-state columns of one run from its logged steps and their MaxVio_batch."""
    x, y = np.asarray(steps, dtype=float), np.asarray(maxvio_batch, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = {"maxvio_trend": math.nan, "maxvio_trend_low": math.nan, "maxvio_trend_high": math.nan,
           "maxvio_batch_tail": math.nan, "settled": False}
    if not len(x):
        return out
    order = np.argsort(x)
    x, y = x[order], y[order]
    last = x[-1]
    out["maxvio_batch_tail"] = float(y[x > last * (1 - TAIL_MEAN)].mean()) if (x > last * (1 - TAIL_MEAN)).any() \
        else float(y[-1])
    found = trend(x[x > last * (1 - TAIL_TREND)], y[x > last * (1 - TAIL_TREND)])
    if found is None:
        return out
    slope, low, high = found
    out.update(maxvio_trend=slope, maxvio_trend_low=low, maxvio_trend_high=high, settled=bool(low <= 0 <= high))
    return out


def trend(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """(slope per 100 steps, 95 % low, high) of log y on x (of y itself where a value is 0, as an
    expert-choice MaxVio can be): OLS with Newey-West standard errors; None with too few points."""
    if len(x) < MIN_POINTS or np.ptp(x) == 0:
        return None
    y = np.log(y) if (y > 0).all() else y
    if np.ptp(y) == 0:
        return 0.0, 0.0, 0.0  # NOTE: a constant level has no trend (and no spread to divide by)
    design = sm.add_constant(x / 100.0)
    lags = max(1, int(round(len(x) ** 0.25)))  # NOTE: the usual rule of thumb for Newey-West lags
    fit = sm.OLS(y, design).fit(cov_type="HAC", cov_kwds={"maxlags": lags})
    return float(fit.params[1]), *(float(v) for v in fit.conf_int(0.05)[1])


SETTLE_GRID = 0.05  # candidate settle starts: every 5 % of the steps


def settle_step(maxvio_batch) -> float:
    """The step (1-based) from which a run's MaxVio_batch (one value per step) shows no trend to
    the end, the earliest such start of the grid (module docstring); NaN where the last quarter
    still trends or the run is too short to tell. Only the windows up to the first flat one and
    the last quarter's are read: one false "trend" among many nested windows would otherwise
    push the step late."""
    y = np.asarray(maxvio_batch, dtype=float)
    y = y[np.isfinite(y)]
    n = len(y)
    if not n:
        return math.nan
    x = np.arange(1, n + 1, dtype=float)
    starts = sorted({int(n * SETTLE_GRID * i) for i in range(int(round((1 - TAIL_TREND) / SETTLE_GRID)) + 1)})
    flat = [(lambda found: found is not None and found[1] <= 0 <= found[2])(trend(x[start:], y[start:]))
            for start in starts]
    if not flat[-1]:  # NOTE: the last quarter still trends: not settled by the end
        return math.nan
    settled = float(starts[flat.index(True)] + 1)
    return settled


def steady_states(steps: pd.DataFrame) -> pd.DataFrame:
    """Per run_id of a steps table (run_id, step, maxvio_batch): its steady-state columns."""
    if not len(steps) or "maxvio_batch" not in steps:
        return pd.DataFrame(columns=["run_id", *COLUMNS])
    rows = [{"run_id": run_id, **steady_state(part["step"], part["maxvio_batch"])}
            for run_id, part in steps.groupby("run_id", sort=False)]
    return pd.DataFrame(rows)


def with_steady_state(runs: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """`runs` with the steady-state columns, computed from `steps` for the runs that lack them
    (written before the trainer recorded them)."""
    if not len(runs) or "run_id" not in runs:
        return runs
    have = runs["settled"].notna() if "settled" in runs else pd.Series(False, index=runs.index)
    if have.all() or steps is None or not len(steps) or "maxvio_batch" not in steps:
        return runs
    missing = runs.loc[~have, "run_id"]
    found = steady_states(steps.loc[steps["run_id"].isin(set(missing)), ["run_id", "step", "maxvio_batch"]])
    found = found.set_index("run_id")
    out = runs.copy()
    for column in COLUMNS:
        values = out.loc[~have, "run_id"].map(found[column]) if len(found) else pd.Series(dtype=object)
        if column not in out:
            out[column] = pd.Series(pd.NA, index=out.index, dtype=object)
        out[column] = out[column].astype(object)
        out.loc[~have, column] = values.to_numpy() if len(values) else pd.NA
    out["settled"] = out["settled"].astype("boolean")
    return out
