"""Does a ranking of methods carry over between architectures? (docs/methods.md, "Concordance")

A suite run over several model families (`model.family`, usually as a [grid] key) orders its
methods on each family by a metric's seed mean. Two families agree as much as Kendall's tau of
their orders says: 1 the same order, 0 no relation, -1 reversed. The uncertainty is at the level
of the seed: the families' orders on each seed give a tau per seed, and its mean has a 95 %
t-interval over the seeds (n - 1 degrees of freedom). The proxy's ranking carries over to a
family where that interval lies above 0, does not where it lies at or below 0, and is unresolved
where it contains 0.

Methods are the variants' labels without their [grid] point, so `loss_free[model.family=olmoe]`
and `loss_free[model.family=mixtral]` are one method on two families.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness.analysis import stats

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


def pairs(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per pair of families: Kendall's tau of their seed-mean orders, and the mean of the per-seed
    taus with its 95 % t-interval over the seeds both have."""
    values = table(runs, metric)
    names = list(dict.fromkeys(values.index.get_level_values("family")))
    names = sorted(names, key=lambda f: (f != PROXY, f))
    means = values.groupby(level="family").mean()
    rows = []
    for a, b in itertools.combinations(names, 2):
        seeds = sorted(set(values.loc[a].index) & set(values.loc[b].index))
        per_seed = [tau(values.loc[(a, s)], values.loc[(b, s)]) for s in seeds]
        per_seed = [t for t in per_seed if not math.isnan(t)]
        mean, low, high = stats.t_interval(per_seed) if per_seed else (math.nan,) * 3
        rows.append({"metric": metric, "a": a, "b": b, "methods": int(means.loc[[a, b]].notna().all().sum()),
                     "tau": tau(means.loc[a], means.loc[b]), "seeds": len(per_seed), "tau_seed_mean": mean,
                     "low95": low, "high95": high})
    return pd.DataFrame(rows)


def carries_over(pairs_table: pd.DataFrame) -> str:
    """One sentence per metric: whether the proxy's order carries over to each family."""
    parts = []
    for metric, rows in pairs_table[pairs_table["a"] == PROXY].groupby("metric", sort=False):
        said = []
        for r in rows.itertuples():
            verdict = ("carries over" if r.low95 > 0 else "does not carry over" if r.high95 <= 0 else "is unresolved")
            said.append(f"{r.b} {verdict} (tau {r.tau:+.2f}; per seed {r.tau_seed_mean:+.2f} [{r.low95:+.2f}, "
                        f"{r.high95:+.2f}], {r.seeds} seeds)")
        parts.append(f"By {metric}, the proxy's order of the methods: " + "; ".join(said) + ".")
    return " ".join(parts)


def has_families(runs: pd.DataFrame) -> bool:
    return families(runs).nunique() > 1 and len(np.unique(methods(runs))) >= 3
