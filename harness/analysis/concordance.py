"""Does a ranking of methods hold across architectures? (docs/methods.md, "Concordance")

A suite run over several model families (`model.family`, usually as a [grid] key) orders its
methods on each family by a metric's seed mean. Two families agree as much as Kendall's tau of
their orders says: 1 the same order, 0 no relation, -1 reversed. Its uncertainty is at the level
of the seed, from two tests that stay inside tau's range:

    interval      a bootstrap over seeds: the seeds are drawn with replacement (the same draw for
                  both families, since a seed fixes the data order of every run), the seed means
                  and their tau recomputed; the 2.5 and 97.5 percentiles (always inside [-1, 1])
    permutation   p of "no relation": tau of the seed means against tau with the second family's
                  methods shuffled (every permutation up to 8 methods, else 20,000 draws)

A ranking is **concordant** where the permutation test rejects at 0.05 and the interval lies
above 0, "not shown" otherwise, with the figure. On MaxVio, structurally separated methods are
left out by default: a method whose MaxVio is worse than every balanced method's (MaxVio_global
at most 0.3 on average) on every family and seed is last everywhere by construction and would
make pairs concordant automatically (the unbalanced control, a tiny aux alpha).

Methods are the variants' labels without their [grid] point, so `loss_free[model.family=olmoe]`
and `loss_free[model.family=mixtral]` are one method on two families.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness.metric_registry import BALANCED_MAXVIO

PROXY = "harness"


def families(runs: pd.DataFrame) -> pd.Series:
    """Per run: its architecture (the proxy's rows have no model.family column value)."""
    return runs["model.family"].fillna(PROXY).astype(str) if "model.family" in runs else pd.Series(PROXY, runs.index)


def methods(runs: pd.DataFrame) -> pd.Series:
    return runs["variant"].astype(str).str.split("[", n=1).str[0]


def table(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Seed x family x method values of `metric` (the mean over runs sharing all three)."""
    frame = runs.assign(family=families(runs), method=methods(runs))
    return frame.pivot_table(index=["family", "seed"], columns="method", values=metric, aggfunc="mean")


def order(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per family: its methods from best (lowest seed mean) to worst, with the values."""
    means = table(runs, metric).groupby(level="family").mean()
    return pd.DataFrame({family: [f"{m} ({v:.3f})" for m, v in row.dropna().sort_values().items()]
                         for family, row in means.iterrows()}).T


def tau(a: pd.Series, b: pd.Series) -> float:
    both = pd.concat([a, b], axis=1).dropna()
    if len(both) < 3 or both.iloc[:, 0].nunique() < 2 or both.iloc[:, 1].nunique() < 2:
        return math.nan
    return float(sps.kendalltau(both.iloc[:, 0], both.iloc[:, 1]).statistic)


BOOTSTRAP = 2000  # seed resamples for tau's interval
PERMUTATIONS = 20000  # random shuffles where the methods are too many to enumerate
EXACT_UP_TO = 8  # methods: every permutation (8! = 40,320)


def separated(values: pd.DataFrame, metric: str) -> list[str]:
    """The methods that are structurally separated on `metric` (module docstring): MaxVio only."""
    if metric != "maxvio_global":
        return []
    means = values.mean()
    balanced = [m for m in values.columns if means[m] <= BALANCED_MAXVIO]
    if len(balanced) < 3:
        return []
    worst_balanced = values[balanced].max(axis=1)
    return [m for m in values.columns if m not in balanced and bool((values[m] > worst_balanced).all())]


def tau_b(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of `x` [M] (or of each row of `x` [K, M]) against each row of `Y` [K, M] (as
    scipy's kendalltau, vectorised: the sum of the pairwise sign products over the root of the two
    counts of untied pairs)."""
    sx = np.sign(x[..., :, None] - x[..., None, :])  # [M, M] or [K, M, M]
    sy = np.sign(Y[:, :, None] - Y[:, None, :])  # [K, M, M]
    norm = np.sqrt((sx != 0).sum(axis=(-2, -1)) * (sy != 0).sum(axis=(1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (sx * sy).sum(axis=(1, 2)) / norm, np.nan)


def bootstrap_interval(values: pd.DataFrame, a: str, b: str, seeds: list, rng: np.random.Generator):
    """The 95 % percentile interval of tau(a, b) over seed resamples (the same seeds for both)."""
    first, second = values.loc[a].loc[seeds].to_numpy(float), values.loc[b].loc[seeds].to_numpy(float)  # [S, M]
    shared = ~(np.isnan(first).all(axis=0) | np.isnan(second).all(axis=0))
    first, second = first[:, shared], second[:, shared]
    if first.shape[1] < 3:
        return math.nan, math.nan
    pick = rng.integers(0, len(seeds), size=(BOOTSTRAP, len(seeds)))  # [B, S]
    with np.errstate(invalid="ignore"):
        x, y = np.nanmean(first[pick], axis=1), np.nanmean(second[pick], axis=1)  # [B, M]
    taus = tau_b(x, y)
    taus = taus[~np.isnan(taus)]
    return (float(np.percentile(taus, 2.5)), float(np.percentile(taus, 97.5))) if len(taus) else (math.nan,) * 2


def permutation_p(first: pd.Series, second: pd.Series, rng: np.random.Generator) -> float:
    """One-sided p of tau >= the observed under shuffles of the second order (exact up to EXACT_UP_TO)."""
    both = pd.concat([first, second], axis=1).dropna()
    observed = tau(both.iloc[:, 0], both.iloc[:, 1])
    if math.isnan(observed):
        return math.nan
    x, y = both.iloc[:, 0].to_numpy(float), both.iloc[:, 1].to_numpy(float)
    orders = (np.array(list(itertools.permutations(range(len(y))))) if len(y) <= EXACT_UP_TO
              else np.array([rng.permutation(len(y)) for _ in range(PERMUTATIONS)]))
    taus = np.concatenate([tau_b(x, y[chunk]) for chunk in np.array_split(orders, max(1, len(orders) // 5000))])
    return float((taus >= observed - 1e-12).mean())


def pairs(runs: pd.DataFrame, metric: str, drop_separated: bool = True) -> pd.DataFrame:
    """Per pair of families: Kendall's tau of their seed-mean orders, its bootstrap interval over
    the seeds both have, the permutation p, and the methods left out as structurally separated."""
    values = table(runs, metric)
    left_out = separated(values, metric) if drop_separated else []
    values = values.drop(columns=left_out)
    names = list(dict.fromkeys(values.index.get_level_values("family")))
    names = sorted(names, key=lambda f: (f != PROXY, f))
    means = values.groupby(level="family").mean()
    rng = np.random.default_rng(0)  # NOTE: fixed, so a page rebuilt from its data prints the same interval
    rows = []
    for a, b in itertools.combinations(names, 2):
        seeds = sorted(set(values.loc[a].index) & set(values.loc[b].index))
        low, high = bootstrap_interval(values, a, b, seeds, rng) if len(seeds) >= 2 else (math.nan,) * 2
        rows.append({"metric": metric, "a": a, "b": b, "methods": int(means.loc[[a, b]].notna().all().sum()),
                     "tau": tau(means.loc[a], means.loc[b]), "seeds": len(seeds), "low95": low, "high95": high,
                     "p_permutation": permutation_p(means.loc[a], means.loc[b], rng),
                     "left_out": ", ".join(left_out)})
    return pd.DataFrame(rows)


def concordant(row) -> bool:
    return bool(row.p_permutation < 0.05 and row.low95 > 0)


def carries_over(pairs_table: pd.DataFrame) -> str:
    """One sentence per metric: whether the proxy's order is concordant with each family's."""
    parts = []
    for metric, rows in pairs_table[pairs_table["a"] == PROXY].groupby("metric", sort=False):
        said = [f"{r.b} {'concordant' if concordant(r) else 'not shown'} (tau {r.tau:+.2f} [{r.low95:+.2f}, "
                f"{r.high95:+.2f}], permutation p = {r.p_permutation:.2g}, {r.seeds} seeds)" for r in rows.itertuples()]
        left = rows["left_out"].iloc[0]
        parts.append(f"By {metric}" + (f" (left out as structurally separated: {left})" if left else "")
                     + ", the proxy's order of the methods against each family's: " + "; ".join(said) + ".")
    return " ".join(parts)


def has_families(runs: pd.DataFrame) -> bool:
    return families(runs).nunique() > 1 and len(np.unique(methods(runs))) >= 3
