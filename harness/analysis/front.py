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

Outside the range the distance is a bound, not a value: the front only rises toward more
balance and falls toward less, so a beyond-seed's true distance is at most its recorded one (it
can support "better", never "worse") and a past-seed's at least (the reverse). One test over
every seed: the mean of the per-seed distances with its 95 % t-interval, each seed counted as its
value inside the range and as its conservative bound outside it. The verdict says what that test
showed (docs/methods.md, "Verdicts"):

    beats the front            mean < 0 and the two-sided t-test rejects, no seed past the front
    worse than the front       mean > 0 and the test rejects, no seed beyond the front
    dominated by the front     the same, every seed past the front's least balanced point
    mixed                      seeds on both sides of the front's range: no direction is testable
    not distinguishable from the front, d [CI]   otherwise (never "on the front": not rejected is
                               not shown equal)

Where the seeds sit (inside, beyond, past) is the detail under the verdict. Holm applies to the
test like any other (verdicts.py).

Legend: MV = MaxVio_global, the balance axis.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.analysis import stats

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
    """Per method: its seeds and where they sit, the mean distance over every seed with its 95 %
    interval, the p-value of "distance = 0" where the mean's direction is testable, and the verdict
    (the module docstring)."""
    rows = []
    for group, part in distances.groupby("variant", sort=False):
        counts = part["position"].value_counts()
        part = part[part["position"].isin(PLACES)]
        d = part["distance"].to_numpy(float)
        mean, low, high = stats.t_interval(d)
        testable = counts.get("past", 0) == 0 if mean < 0 else counts.get("beyond", 0) == 0
        row = {"variant": group, "seeds": len(part), "position": where_they_sit(counts), "n": len(d), "diff": mean,
               "low95": low, "high95": high, "p": stats.t_test_p(d) if testable else math.nan,
               "seeds_there": ", ".join(str(s) for s in sorted(part["seed"])), "seeds_better": int((d < 0).sum()),
               **{f"seeds_{p}": int(counts.get(p, 0)) for p in PLACES}}
        row["verdict"] = place_verdict(row)
        rows.append(row)
    return pd.DataFrame(rows)


def where_they_sit(counts: pd.Series) -> str:
    """`2 inside, 1 beyond`: how many seeds stand in each place against the front."""
    return ", ".join(f"{int(counts[p])} {p}" for p in PLACES if counts.get(p, 0)) or "none"


def shown_distance(row: dict) -> str:
    """`d = -0.048 [-0.101, +0.006]` (one seed: no interval)."""
    if pd.isna(row["low95"]):
        return f"d = {row['diff']:+.3f} ({int(row['n'])} seed)"
    return f"d = {row['diff']:+.3f} [{row['low95']:+.3f}, {row['high95']:+.3f}]"


def place_verdict(row: dict, alpha: float = 0.05) -> str:
    """The verdict words of one method against one front (`p_adjusted` where the suite corrected
    for many comparisons): what the one test over all its seeds showed."""
    if int(row["n"]) == 0:
        return "no verdict: no seed with both val loss and MaxVio"
    p = row.get("p_adjusted", row["p"])
    if p < alpha and row["diff"] < 0:
        return f"beats the front, {shown_distance(row)}"
    if p < alpha and row["diff"] > 0:
        word = "dominated by the front" if int(row["seeds_past"]) == int(row["n"]) else "worse than the front"
        return f"{word}, {shown_distance(row)}"
    if int(row["seeds_beyond"]) and int(row["seeds_past"]):
        return (f"mixed: {int(row['seeds_beyond'])} seed(s) beyond the front's most balanced point, "
                f"{int(row['seeds_past'])} past its least balanced, {shown_distance(row)}")
    if pd.isna(row["p"]) and int(row["n"]) >= 2:  # the mean's direction is one its seeds' bounds cannot show
        side, word, end = (("past", "better", "least") if row["diff"] < 0 else ("beyond", "worse", "most"))
        return (f"not shown {word} than the front ({int(row[f'seeds_{side}'])} seed(s) {side} its {end} balanced "
                f"point), {shown_distance(row)}: such a seed's distance is a bound that cannot show {word}")
    return f"not distinguishable from the front, {shown_distance(row)}"


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
        text += "; dominated (off the Pareto front) " + ", ".join(
            f"{label} on {int(r['size'] - r['sum'])} of {int(r['size'])} seeds"
            for label, (_, r) in zip(dominated, off[off["sum"] < off["size"]].iterrows()))
    return text
