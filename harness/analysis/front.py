"""A reference family's Pareto front, per seed, and where a method stands against it
(docs/methods.md, "Verdicts").

A suite names a family swept over a strength knob (`front = { router = "sigmoid_topk_aux", key =
"router.aux_alpha", values = [...] }`). Per seed, the family's front is its non-dominated points in
(MaxVio_global, val loss), both lower being better: a member that another member beats on both
(a larger alpha that balanced worse and lost more) is dominated, reported as such, and not used.
Sorted by MaxVio the front's loss falls monotonically; between two front points it is linear in
log MaxVio. A method's run at that seed stands in one of three places:

    inside   its MaxVio lies within the front's range: distance = its loss minus the front's
             loss at its MaxVio (negative: below the front, better than the family at that balance)
    beyond   more balanced than the front's most balanced point: distance = its loss minus that
             point's (no higher: the method dominates the most balanced member)
    past     less balanced than the front's least balanced point: distance = its loss minus that
             point's (no lower: the least balanced member dominates the method)

A verdict takes the place most of the method's seeds share and needs at least MIN_SEEDS seeds
there: inside, the mean distance and its 95 % t-interval say below / on / above the front; beyond,
a mean distance <= 0 with the loss lower on most of those seeds says "beyond the front
(dominates)"; past, a mean distance >= 0 with the loss no lower on most of them says "dominated by
the front"; where the mean and the seeds disagree, the verdict gives both. Nothing is extrapolated: beyond and past compare with an end point of
the front, never with a line drawn past it.

Legend: MV = MaxVio_global, the balance axis.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.analysis import stats

MIN_SEEDS = 3  # seeds in one place before a method gets a verdict against a front
MV, LOSS = "maxvio_global", "val_loss"
PLACES = ("inside", "beyond", "past")


def pareto_mask(x, y) -> np.ndarray:
    """True for points not dominated in (x, y), both minimised."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return np.array([not np.any((x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))) for i in range(len(x))],
                    dtype=bool)


def on_front(points: pd.DataFrame) -> pd.Series:
    """Per run of one seed's family: whether it is on the front (non-dominated, MaxVio > 0)."""
    usable = points[MV].notna() & points[LOSS].notna() & (points[MV] > 0)
    flags = pd.Series(False, index=points.index)
    if usable.any():
        flags[usable] = pareto_mask(points.loc[usable, MV], points.loc[usable, LOSS])
    return flags


def frontier(points: pd.DataFrame) -> pd.DataFrame:
    """One seed's front: the family's non-dominated points, by MaxVio (their loss then falls)."""
    return points[on_front(points)].sort_values(MV)


def place(front: pd.DataFrame, maxvio: float, loss: float) -> tuple[str, float]:
    """(where a run stands, the front's loss it is compared with): see the module docstring."""
    if not len(front) or pd.isna(maxvio) or pd.isna(loss):
        return "none", math.nan
    x, y = np.log(front[MV].to_numpy(float)), front[LOSS].to_numpy(float)
    if maxvio <= 0 or math.log(maxvio) < x[0]:  # NOTE: a MaxVio of 0 is more balanced than any front point
        return "beyond", float(y[0])
    if math.log(maxvio) > x[-1]:
        return "past", float(y[-1])
    return "inside", float(np.interp(math.log(maxvio), x, y))


def front_distances(runs: pd.DataFrame, family: pd.Series) -> pd.DataFrame:
    """Per other run: its place against its seed's front and its loss minus the front's there."""
    fronts = {seed: frontier(part) for seed, part in runs[family].groupby("seed")}
    rows = []
    for _, run in runs[~family].iterrows():
        where, at = place(fronts.get(run["seed"], runs.iloc[:0]), run[MV], run[LOSS])
        rows.append({"variant": run["variant"], "seed": run["seed"], MV: run[MV], LOSS: run[LOSS],
                     "position": where, "front_loss": at, "distance": run[LOSS] - at})
    return pd.DataFrame(rows, columns=["variant", "seed", MV, LOSS, "position", "front_loss", "distance"])


def front_verdicts(distances: pd.DataFrame) -> pd.DataFrame:
    """Per method: its place, the seeds there, the mean distance with its 95 % interval, the
    p-value of "distance = 0" (inside only) and the verdict (the module docstring)."""
    rows = []
    for group, part in distances.groupby("variant", sort=False):
        counts = part["position"].value_counts()
        where = max(PLACES, key=lambda p: counts.get(p, 0))
        mine = part[part["position"] == where]
        d = mine["distance"].to_numpy(float)
        mean, low, high = stats.t_interval(d)
        row = {"variant": group, "seeds": len(part), "position": where, "n": len(mine), "diff": mean, "low95": low,
               "high95": high, "p": stats.t_test_p(d) if where == "inside" else math.nan,
               "seeds_there": ", ".join(str(s) for s in sorted(mine["seed"])), "seeds_better": int((d < 0).sum()),
               **{f"seeds_{p}": int(counts.get(p, 0)) for p in PLACES}}
        row["verdict"] = place_verdict(row)
        rows.append(row)
    return pd.DataFrame(rows)


def place_verdict(row: dict, alpha: float = 0.05) -> str:
    """The verdict words of one method against one front (`p_adjusted` where the suite corrected
    for many comparisons)."""
    n, where, better = int(row["n"]), row["position"], int(row["seeds_better"])
    if n < MIN_SEEDS:
        inside, beyond, past = (int(row[f"seeds_{p}"]) for p in PLACES)
        return (f"too few seeds: {inside} of {int(row['seeds'])} inside the front's MaxVio range, {beyond} beyond its "
                f"most balanced point, {past} past its least balanced (a verdict needs {MIN_SEEDS} in one place)")
    if where == "inside":
        p = row.get("p_adjusted", row["p"])
        return "on the front" if not p < alpha else "below the front" if row["diff"] < 0 else "above the front"
    mixed = f"loss lower on {better} of {n} seeds, mean difference {row['diff']:+.3f}"
    if where == "beyond":
        return (f"beyond the front (dominates): more balanced on {n} seeds, loss lower on {better} of {n}"
                if row["diff"] <= 0 and 2 * better > n else f"beyond the front's balance, {mixed}")
    return (f"dominated by the front: less balanced on {n} seeds, loss lower on {better} of {n}"
            if row["diff"] >= 0 and 2 * better < n else f"past the front's imbalance, {mixed}")


def family_knob(family_runs: pd.DataFrame) -> str | None:
    """The config column a family sweeps (the one that varies within it), or None."""
    varying = [c for c in family_runs.columns if c.startswith(stats.CONFIG_PREFIXES)
               and family_runs[c].astype(str).nunique() > 1]
    return varying[0] if len(varying) == 1 else None


def family_points(family_runs: pd.DataFrame) -> pd.DataFrame:
    """The family's runs, each flagged `on_front` for its seed."""
    flags = pd.concat([on_front(part) for _, part in family_runs.groupby("seed")]) if len(family_runs) else []
    return family_runs.assign(on_front=flags)


def family_reach(family_runs: pd.DataFrame, name: str) -> str:
    """How far a family got: its most balanced member (mean over seeds), and the members that were
    not on the front (dominated), with how many seeds say so."""
    points = family_points(family_runs)
    knob = family_knob(points) or "variant"
    means = points.groupby(knob)[[MV, LOSS]].mean()
    best = means[MV].idxmin()
    short = knob.rpartition(".")[2]
    text = (f"{name}: never balanced below MaxVio_global {means.loc[best, MV]:.3g} (at {short} = {best:g}, the mean "
            f"of {points.loc[points[knob] == best, 'seed'].nunique()} seeds)" if knob != "variant" else
            f"{name}: never balanced below MaxVio_global {means.loc[best, MV]:.3g} ({best})")
    off = points.groupby(knob)["on_front"].agg(["sum", "size"])
    dominated = [f"{short} = {v:g}" if knob != "variant" else str(v) for v, r in off.iterrows() if r["sum"] < r["size"]]
    if dominated:
        text += "; dominated (not on the front) " + ", ".join(
            f"{label} on {int(r['size'] - r['sum'])} of {int(r['size'])} seeds"
            for label, (_, r) in zip(dominated, off[off["sum"] < off["size"]].iterrows()))
    return text
