"""Verdicts on top of the paired tables: is a method below the aux-loss front at its own balance,
and are two methods the same within a margin (docs/methods.md, "Verdicts").

Equivalence (TOST, two one-sided t-tests). For per-seed paired differences d_1..d_n with mean
dbar and spread s, and a margin m set by the suite (`equivalence_margin = {val_loss = 0.01}`):

    equivalent within +/- m   the 90 % interval dbar -/+ t_{0.95, n-1} s / sqrt(n) lies inside (-m, m)
                              (both one-sided tests reject at 5 %: the TOST of Schuirmann 1987)
    different                 the 95 % interval dbar -/+ t_{0.975, n-1} s / sqrt(n) excludes 0
    unresolved                otherwise

with the seeds each would need at the observed spread: the smallest n whose 90 % half-width is
below m - |dbar| (equivalence), or whose 95 % half-width is below |dbar| (difference).

The front. A suite declares a reference family swept over a strength knob,
`front = { router = "sigmoid_topk_aux", key = "router.aux_alpha", values = [...] }` (or a list
of named families, each judged on its own). Per seed the
front is val loss against log MaxVio_global, piecewise linear through the family's points in
order of MaxVio. A method's distance to it at that seed is its val loss minus the front's at its
own MaxVio, interpolated between the bracketing pair of the same seed; a seed whose MaxVio lies
outside the family's range gives no distance (no extrapolation). Over the seeds that do, the
mean distance and its 95 % t-interval give the verdict: below (interval under 0), above (over
0), on (contains 0); outside the range when fewer than 2 seeds fall inside it.

A suite with sequential seeds (`seeds = { min, max, ... }`) judges its metric by the design of
sequential.py instead: alpha spent over planned looks, so stopping early does not inflate it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness.analysis import sequential
from harness.analysis.stats import paired_difference, per_seed, seeds_needed, seeds_to_equivalence, t_quantile


def tost(d, margin: float) -> dict:
    """Equivalence of per-seed paired differences `d` within +/- `margin` (see the module docstring)."""
    d = np.asarray(pd.Series(d).dropna(), dtype=float)
    n, mean = len(d), float(d.mean()) if len(d) else math.nan
    out = {"n": n, "diff": mean, "low90": math.nan, "high90": math.nan, "low95": math.nan, "high95": math.nan,
           "p_tost": math.nan, "verdict": "unresolved", "seeds_to_equivalence": math.nan,
           "seeds_to_difference": math.nan}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    half90, half95 = t_quantile(0.95, n - 1) * se, t_quantile(0.975, n - 1) * se
    p_lower = float(sps.t.sf((mean + margin) / se, n - 1)) if se > 0 else float(mean <= -margin)
    p_upper = float(sps.t.cdf((mean - margin) / se, n - 1)) if se > 0 else float(mean >= margin)
    out.update(low90=mean - half90, high90=mean + half90, low95=mean - half95, high95=mean + half95,
               p_tost=max(p_lower, p_upper), seeds_to_difference=seeds_needed(mean, sd),
               seeds_to_equivalence=seeds_to_equivalence(mean, sd, margin))
    if -margin < out["low90"] and out["high90"] < margin:
        out["verdict"] = f"equivalent within ±{margin:g}"
    elif out["low95"] > 0 or out["high95"] < 0:
        out["verdict"] = "different"
    return out


def front_loss(points: pd.DataFrame, maxvio: float) -> float:
    """The front's val loss at `maxvio`: piecewise linear in log MaxVio through `points`
    (columns maxvio_global, val_loss) of one seed; NaN outside their range."""
    pts = points.dropna(subset=["maxvio_global", "val_loss"])
    pts = pts[pts["maxvio_global"] > 0].sort_values("maxvio_global")
    if len(pts) < 2 or not maxvio > 0:
        return math.nan
    x, y = np.log(pts["maxvio_global"].to_numpy()), pts["val_loss"].to_numpy()
    at = math.log(maxvio)
    if at < x[0] or at > x[-1]:
        return math.nan  # NOTE: no extrapolation beyond the family's balance
    return float(np.interp(at, x, y))


def front_distances(runs: pd.DataFrame, family: pd.Series) -> pd.DataFrame:
    """Per other group and seed: its val loss minus the front's at its MaxVio (NaN outside)."""
    front, others = runs[family], runs[~family]
    rows = []
    for _, run in others.iterrows():
        same_seed = front[front["seed"] == run["seed"]]
        at = front_loss(same_seed, run["maxvio_global"])
        rows.append({"variant": run["variant"], "seed": run["seed"], "maxvio_global": run["maxvio_global"],
                     "val_loss": run["val_loss"], "front_loss": at, "distance": run["val_loss"] - at})
    return pd.DataFrame(rows)


def front_verdicts(distances: pd.DataFrame) -> pd.DataFrame:
    """Per group: mean distance to the front over the seeds inside its range, the 95 % interval and
    the verdict (below / on / above / outside the front's MaxVio range)."""
    rows = []
    for group, part in distances.groupby("variant", sort=False):
        inside = part["distance"].dropna()
        stats = paired_difference(inside.reset_index(drop=True), pd.Series(0.0, index=range(len(inside))))
        if len(inside) < 2:
            verdict = "outside the front's MaxVio range"
        elif stats["high"] < 0:
            verdict = "below the front"
        elif stats["low"] > 0:
            verdict = "above the front"
        else:
            verdict = "on the front"
        rows.append({"variant": group, "seeds": len(part), "seeds_inside": len(inside), "distance": stats["diff"],
                     "low": stats["low"], "high": stats["high"], "verdict": verdict})
    return pd.DataFrame(rows)


def equivalence_table(runs: pd.DataFrame, margins: dict[str, float], bases: dict[str, str]) -> pd.DataFrame:
    """Per group and metric with a margin: the TOST verdict of its paired difference to its baseline
    group (`bases`, from stats.baseline_groups) over the seeds both have."""
    rows = []
    for metric, margin in margins.items():
        if metric not in runs:
            continue
        table = per_seed(runs, metric)
        for group, base in bases.items():
            if group == base or group not in table or base not in table:
                continue
            d = (table[group] - table[base]).dropna()
            rows.append({"kind": "equivalence", "variant": group, "against": base, "metric": metric,
                         "margin": margin, **tost(d, margin)})
    return pd.DataFrame(rows)


def recorded_margins(runs: pd.DataFrame) -> dict[str, float]:
    """The suite's `equivalence_margin`, as its runs recorded it."""
    if "equivalence_margin" not in runs:
        return {}
    stored = runs["equivalence_margin"].dropna()
    return json.loads(stored.iloc[0]) if len(stored) else {}


def families_of(runs: pd.DataFrame, family: pd.Series) -> pd.Series:
    """Per run: the name of the front family it belongs to (None for the methods measured against
    it); runs written before families had names belong to one called "front"."""
    named = runs["front_family"].where(runs["front_family"].astype(str) != "") if "front_family" in runs else None
    names = named.fillna("front") if named is not None else pd.Series("front", index=runs.index)
    return names.where(family, None)


def verdicts(runs: pd.DataFrame, bases: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the `verdicts` table: front and equivalence rows, long form; the per-seed front distances)."""
    parts, found = [], []
    family = runs["front"].fillna(False).astype(bool) if "front" in runs else pd.Series(False, index=runs.index)
    names = families_of(runs, family)
    for name in names.dropna().unique() if (~family).any() else []:
        mine = names == name
        distances = front_distances(runs[~family | mine], mine[~family | mine]).assign(family=name)
        front = front_verdicts(distances).assign(kind="front", against=name, metric="val_loss")
        parts.append(front.rename(columns={"distance": "diff", "low": "low95", "high": "high95"}))
        found.append(distances)
    distances = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
    margins, plan = recorded_margins(runs), sequential.recorded_plan(runs)
    if margins:
        table = equivalence_table(runs, margins, bases)
        # NOTE: a sequential suite's verdict on its metric is the design's (alpha spent over its looks)
        parts.append(table[table["metric"] != plan.metric] if plan is not None and len(table) else table)
    if plan is not None:
        parts.append(sequential.decisions(runs[~family], plan, {g: b for g, b in bases.items()
                                                                if g in set(runs.loc[~family, "variant"])}, margins))
    table = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else pd.DataFrame()
    return table, distances
