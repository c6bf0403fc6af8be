"""Verdicts on top of the paired tables: where a method stands against a reference family's front
at its own balance (front.py), and whether two methods are the same within a margin
(docs/methods.md, "Verdicts").

Equivalence (TOST, two one-sided t-tests). For per-seed paired differences d_1..d_n with mean
dbar and spread s, and a margin m set by the suite (`equivalence_margin = {val_loss = 0.01}`):

    equivalent within +/- m   the 90 % interval dbar -/+ t_{0.95, n-1} s / sqrt(n) lies inside (-m, m)
                              (both one-sided tests reject at 5 %: the TOST of Schuirmann 1987)
    different                 the 95 % interval dbar -/+ t_{0.975, n-1} s / sqrt(n) excludes 0
    both                      a difference can be real and still inside the margin: the verdict
                              then says "equivalent within +/- m and different"
    unresolved                otherwise

with the seeds each would need at the observed spread. A metric the registry declares log-scale
(MaxVio: positive and skewed) is compared by log ratios, d = log x - log x_base, and its margin is
relative: m = 0.1 means within x1.1 either way (|d| < log 1.1).

Many comparisons. A suite asks several questions at once (each method against each front, each
against the baseline, equivalence and difference); by chance alone some would pass. Unless the
suite says `correction = "none"`, every p-value of the suite's verdicts (the front's "distance =
0", TOST's, the paired t-test's) is Holm-adjusted as one family (stats.holm), and a verdict holds
where its adjusted p < 0.05. Intervals are shown unadjusted. A suite with sequential seeds judges
its metric by the design of sequential.py instead (alpha spent over planned looks).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness.analysis import front, sequential, stats

ALPHA = 0.05
CORRECTIONS = ("holm", "none")


def tost(d, margin: float) -> dict:
    """Equivalence of per-seed paired differences `d` within +/- `margin`, and their difference from 0
    (see the module docstring); the verdict of this one comparison, unadjusted."""
    d = np.asarray(pd.Series(d).dropna(), dtype=float)
    n, mean = len(d), float(d.mean()) if len(d) else math.nan
    out = {"n": n, "diff": mean, "low90": math.nan, "high90": math.nan, "low95": math.nan, "high95": math.nan,
           "p_tost": math.nan, "p_diff": math.nan, "verdict": "unresolved", "seeds_to_equivalence": math.nan,
           "seeds_to_difference": math.nan}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    half90, half95 = stats.t_quantile(0.95, n - 1) * se, stats.t_quantile(0.975, n - 1) * se
    p_lower = float(sps.t.sf((mean + margin) / se, n - 1)) if se > 0 else float(mean <= -margin)
    p_upper = float(sps.t.cdf((mean - margin) / se, n - 1)) if se > 0 else float(mean >= margin)
    out.update(low90=mean - half90, high90=mean + half90, low95=mean - half95, high95=mean + half95,
               p_tost=max(p_lower, p_upper), p_diff=stats.t_test_p(d), seeds_to_difference=stats.seeds_needed(mean, sd),
               seeds_to_equivalence=stats.seeds_to_equivalence(mean, sd, margin))
    out["verdict"] = equivalence_words(out["p_tost"], out["p_diff"], margin)
    return out


def equivalence_words(p_tost: float, p_diff: float, margin: float, label: str | None = None) -> str:
    """The verdict of one equivalence comparison from its (possibly adjusted) p-values."""
    equivalent, different = p_tost < ALPHA, p_diff < ALPHA
    within = f"equivalent within {label or f'±{margin:g}'}"
    if equivalent and different:
        return f"{within} and different"
    return within if equivalent else "different" if different else "unresolved"


def equivalence_table(runs: pd.DataFrame, margins: dict[str, float], bases: dict[str, str]) -> pd.DataFrame:
    """Per group and metric with a margin: TOST and the paired test of its differences to its
    baseline group (`bases`, from stats.baseline_groups) over the seeds both have; log ratios for a
    log-scale metric, against the relative margin log(1 + m)."""
    rows = []
    for metric, margin in margins.items():
        if metric not in runs:
            continue
        table = stats.per_seed(runs, metric)
        for group, base in bases.items():
            if group == base or group not in table or base not in table:
                continue
            d, scale = stats.paired(table, group, base, metric)
            limit = math.log1p(margin) if scale == "log" else margin
            result = tost(d, limit)
            result["verdict"] = equivalence_words(result["p_tost"], result["p_diff"], margin, margin_label(margin, scale))
            rows.append({"kind": "equivalence", "variant": group, "against": base, "metric": metric,
                         "margin": margin, "scale": scale, **result})
    return pd.DataFrame(rows)


def margin_label(margin: float, scale: str) -> str:
    return f"x{1 + margin:g}" if scale == "log" else f"±{margin:g}"


def recorded(runs: pd.DataFrame, column: str, default):
    """A suite setting its runs recorded (the last one written), else `default`."""
    stored = runs[column].dropna() if column in runs else pd.Series(dtype=object)
    stored = stored[stored.astype(str) != ""]
    return stored.iloc[-1] if len(stored) else default


def recorded_margins(runs: pd.DataFrame) -> dict[str, float]:
    """The suite's `equivalence_margin`, as its runs recorded it."""
    return json.loads(recorded(runs, "equivalence_margin", "{}"))


def families_of(runs: pd.DataFrame, family: pd.Series) -> pd.Series:
    """Per run: the name of the front family it belongs to (None for the methods measured against
    it); runs written before families had names belong to one called "front"."""
    named = runs["front_family"].where(runs["front_family"].astype(str) != "") if "front_family" in runs else None
    names = named.fillna("front") if named is not None else pd.Series("front", index=runs.index)
    return names.where(family, None)


def front_mask(runs: pd.DataFrame) -> pd.Series:
    return runs["front"].fillna(False).astype(bool) if "front" in runs else pd.Series(False, index=runs.index)


def grid_points(runs: pd.DataFrame) -> pd.Series:
    """Per run: its suite's [grid] point ("" without one, or for runs written before it was recorded)."""
    return runs["grid_point"].fillna("").astype(str) if "grid_point" in runs else pd.Series("", index=runs.index)


def family_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run: the front it belongs to, named as the verdicts name it ("front", "aux [model.family=olmoe]"
    for a family at a [grid] point), None for the methods measured against it."""
    family, points = front_mask(runs), grid_points(runs)
    names = families_of(runs, family)
    return pd.Series([None if pd.isna(n) else f"{n} [{p}]" if p else n for n, p in zip(names, points)], index=runs.index)


def front_rows(runs: pd.DataFrame) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """Per named family and [grid] point: the verdicts of every other method of that point against
    it, and the per-seed places (a family swept over a grid is one front at each point)."""
    family, points = front_mask(runs), grid_points(runs)
    names = families_of(runs, family)
    verdict_parts, distance_parts = [], []
    for name, point in (sorted(set(zip(names[family], points[family]))) if (~family).any() else []):
        mine = (names == name) & (points == point)
        scope = (~family & (points == point)) | mine
        against = f"{name} [{point}]" if point else name
        distances = front.front_distances(runs[scope], mine[scope]).assign(family=against)
        verdict_parts.append(front.front_verdicts(distances).assign(kind="front", against=against, metric="val_loss",
                                                                     scale="plain"))
        distance_parts.append(distances)
    return verdict_parts, distance_parts


def verdicts(runs: pd.DataFrame, bases: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the `verdicts` table: front, equivalence and sequential rows, long form, decided after the
    suite's correction for many comparisons; the per-seed places against the fronts)."""
    parts, found = front_rows(runs)
    distances = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
    margins, plan, family = recorded_margins(runs), sequential.recorded_plan(runs), front_mask(runs)
    if margins:
        table = equivalence_table(runs, margins, bases)
        # NOTE: a sequential suite's verdict on its metric is the design's (alpha spent over its looks)
        parts.append(table[table["metric"] != plan.metric] if plan is not None and len(table) else table)
    if plan is not None:
        parts.append(sequential.decisions(runs[~family], plan, {g: b for g, b in bases.items()
                                                                if g in set(runs.loc[~family, "variant"])}, margins))
    table = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else pd.DataFrame()
    return decide(table, recorded(runs, "correction", "holm")), distances


def decide(table: pd.DataFrame, correction: str) -> pd.DataFrame:
    """The verdicts of a suite's front and equivalence rows from their p-values, Holm-adjusted as
    one family unless `correction` is "none"; the adjusted values in p_*_adjusted columns."""
    if not len(table):
        return table
    table = table.copy()
    columns = [c for c in ("p", "p_tost", "p_diff") if c in table]
    tests = table[columns].to_numpy(float).ravel()
    adjusted = stats.holm(tests) if correction == "holm" else tests
    for j, column in enumerate(columns):
        table[f"{column}_adjusted"] = adjusted.reshape(len(table), len(columns))[:, j]
    table["correction"] = correction if len(tests[~np.isnan(tests)]) > 1 else "none"
    for i, row in table.iterrows():
        if row["kind"] == "front":
            table.at[i, "verdict"] = front.place_verdict(row.to_dict())
        elif row["kind"] == "equivalence":
            table.at[i, "verdict"] = equivalence_words(row["p_tost_adjusted"], row["p_diff_adjusted"], row["margin"],
                                                       margin_label(row["margin"], row["scale"]))
    return table

