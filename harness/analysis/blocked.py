"""The seed-blocked model behind a suite's comparisons with one baseline (docs/methods.md,
"Verdicts"). Every variant of a suite runs on the same seeds, and a seed moves every variant's
loss together (same data order, same initial weights). Over the baseline and the variants
compared with it, an ordinary least-squares fit of

    y[variant, seed] = mu + a[variant] + b[seed] + e      (statsmodels' formula OLS)

estimates each difference a[group] - a[base] as the paired t-test does, but from the residual
variance of all the variants at once: with V variants on S seeds it has (V - 1)(S - 1) degrees of
freedom instead of S - 1. That pooling is valid only if the variants scatter alike, so the fit is
used only where the Brown-Forsythe test (Levene's test about the median, scipy) of the residuals
by variant does not reject at 0.05; otherwise, and with fewer than 3 variants (where the model is
the paired t-test), each comparison is the paired t-test on its own seeds. With 3 seeds per
variant the homogeneity test has little power: a page says which test each figure used and the
test's p, so a reader can discount it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm as sm_anova
from scipy import stats as sps

HOMOGENEITY = "Brown-Forsythe"
ALPHA = 0.05
PAIRED = "paired t"


@dataclass(frozen=True)
class Blocked:
    """One fit over a baseline and the variants compared with it."""

    result: object  # statsmodels' RegressionResults, or None where the fit could not be made
    names: dict[str, str]  # variant -> the name of its column in the formula
    homogeneity_p: float
    seeds: int

    @property
    def pooled(self) -> bool:
        return self.result is not None and len(self.names) >= 3 and bool(self.homogeneity_p >= ALPHA)

    @property
    def dof(self) -> float:
        return float(self.result.df_resid) if self.result is not None else math.nan

    def test(self) -> str:
        """The test a comparison of this fit uses, in words for a page."""
        where = f"{HOMOGENEITY} p = {self.homogeneity_p:.2g}" if self.homogeneity_p == self.homogeneity_p else ""
        if self.pooled:
            return f"seed-blocked model over {len(self.names)} variants, df {self.dof:g} ({where})"
        if len(self.names) >= 3 and where:
            return f"{PAIRED} (variances differ: {where})"
        return PAIRED

    def contrast(self, group: str, base: str) -> tuple[float, float]:
        """(estimate, standard error) of a[group] - a[base] from the pooled fit."""
        params = self.result.params.index
        vector = np.zeros(len(params))
        for name, sign in ((group, 1.0), (base, -1.0)):
            term = f"C(variant)[T.{self.names[name]}]"
            if term in params:  # NOTE: the reference level has no term of its own
                vector[list(params).index(term)] += sign
        test = self.result.t_test(vector)
        return float(np.squeeze(test.effect)), float(np.squeeze(test.sd))


def fit(table: pd.DataFrame, log: bool) -> Blocked:
    """The seed-blocked fit of `table` (seeds x variants, from stats.per_seed), on log values where
    `log`; seeds any variant lacks stay out of that variant's cells only."""
    names = {v: f"v{i}" for i, v in enumerate(table.columns)}
    long = table.rename(columns=names).rename_axis(index="seed", columns="variant").stack().rename("y").reset_index()
    long = long[np.isfinite(long["y"])]
    if log:
        long = long[long["y"] > 0].assign(y=lambda f: np.log(f["y"]))
    seeds = int(long["seed"].nunique())
    if len(names) < 2 or seeds < 2 or len(long) <= len(names) + seeds - 1:
        return Blocked(None, names, math.nan, seeds)
    long["seed"] = long["seed"].astype(str)
    result = smf.ols("y ~ C(variant) + C(seed)", data=long).fit()
    groups = [part.to_numpy() for _, part in result.resid.groupby(long["variant"]) if len(part) >= 2]
    spread = np.concatenate(groups) if groups else np.zeros(0)
    homogeneity = (float(sps.levene(*groups, center="median").pvalue)
                   if len(groups) >= 3 and np.ptp(spread) > 1e-12 else math.nan)
    return Blocked(result, names, homogeneity, seeds)


def one_sided(mean: float, se: float, dof: float, value: float, upper: bool) -> float:
    """p of the one-sided t-test that the difference is above `value` (below it where `upper`)."""
    if se == 0:
        return float(not (mean < value if upper else mean > value))
    t = (mean - value) / se
    return float(sps.t.cdf(t, dof) if upper else sps.t.sf(t, dof))


def interaction(table: pd.DataFrame) -> dict:
    """The method x family interaction of `table` (seeds x (method, family), two families): the F
    test of y ~ method + family + seed against the model with method:family added (statsmodels'
    anova_lm). No interaction means every method's difference between the two families is the
    same: the families order and space the methods alike. {F, df_num, df_den, p}, NaN where the
    full model leaves no residual degrees of freedom."""
    long = table.rename_axis(index="seed").stack(["method", "family"], future_stack=True).rename("y").reset_index()
    long = long[np.isfinite(long["y"])].astype({"seed": str})
    out = {"F": math.nan, "df_num": math.nan, "df_den": math.nan, "p": math.nan}
    if long["method"].nunique() < 2 or long["family"].nunique() != 2:
        return out
    reduced = smf.ols("y ~ C(method) + C(family) + C(seed)", data=long).fit()
    full = smf.ols("y ~ C(method) * C(family) + C(seed)", data=long).fit()
    if full.df_resid < 1:
        return out
    test = sm_anova(reduced, full)
    return {"F": float(test["F"].iloc[1]), "df_num": float(test["df_diff"].iloc[1]),
            "df_den": float(full.df_resid), "p": float(test["Pr(>F)"].iloc[1])}
