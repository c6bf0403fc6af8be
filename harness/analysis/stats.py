"""Statistics of a results table: which runs are seeds of one config, and how variants compare.

Groups. Seeds are grouped by `config_id` (hash of the resolved config without the seed), never
by label alone. A group is named by its label; where one label covers several configs (a rerun
with other overrides), each gets the keys in which they differ: `loss_free [train.steps=20]`.

Comparisons are paired. Variants of one suite share each seed's initialisation and data order,
so for a metric x and a baseline b, the per-seed differences d_s = x_s - b_s over the seeds
both have remove the seed's own luck from the comparison. With n common seeds,

    mean difference    dbar = (1/n) sum_s d_s
    spread             s_d  = sqrt( sum_s (d_s - dbar)^2 / (n - 1) )
    95 % interval      dbar -/+ t_{0.975, n-1} s_d / sqrt(n)        (Student t, = scipy's ttest_rel)

and '≈' marks a difference whose interval contains 0. A t-interval, not a bootstrap: with the
2 to 5 seeds a suite has, a percentile bootstrap cannot reach beyond the observed min..max of
the d_s and so is too narrow; the t-interval is exact when the d_s are normal.

Seeds a design needs: the n at which a paired t-test (or TOST, for equivalence) would reach 80 %
power if the observed difference and spread were the true ones (statsmodels' TTestPower; a
noncentral-t figure for TOST). Holm's adjustment is statsmodels' too.

Per-variant means of a metric that is positive by nature (MaxVio, tokens/s, throughput ratio)
get an interval on the log scale, which never crosses zero:
    m = mean(x),  s_l = sd(log x),  interval [m / f, m * f],  f = exp(t_{0.975, n-1} s_l / sqrt(n));
other metrics (losses) get the plain t-interval m -/+ t s / sqrt(n).

This is the one module of the analysis that computes intervals, t quantiles, the seeds a
difference needs and the per-seed table (`per_seed`): verdicts, sequential seeds, the transfer
law and `rate` call it.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from harness import metric_registry

# NOTE: columns that identify or describe a run rather than configure it; left out of group names
NOT_CONFIG = {"run_id", "config_id", "seed", "variant", "suite", "baseline", "trial"}
CONFIG_PREFIXES = ("model.", "router.", "train.", "data.", "metrics.")  # the resolved config's columns


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, dof: int) -> float:
    """The p quantile of Student's t with `dof` degrees of freedom (NaN for dof < 1)."""
    return float(sps.t.ppf(p, dof)) if dof >= 1 else math.nan


def t975(n: int) -> float:
    """Two-sided 95 % Student t quantile for a sample of n (n - 1 degrees of freedom)."""
    return t_quantile(0.975, n - 1)


def t_interval(x, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided `level` t-interval of the mean of a sample (NaN bounds below 2)."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(x))
    if n < 2:
        return mean, math.nan, math.nan
    half = t_quantile(0.5 + level / 2, n - 1) * float(np.std(x, ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def t_test_p(d) -> float:
    """Two-sided p-value of "the mean of d is 0" (one-sample t-test; NaN below 2 values)."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return math.nan
    sd = float(np.std(d, ddof=1))
    if sd == 0:
        return 1.0 if float(np.mean(d)) == 0 else 0.0
    return float(2 * sps.t.sf(abs(float(np.mean(d))) / (sd / math.sqrt(len(d))), len(d) - 1))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a set of p-values (statsmodels' multipletests; NaN stays NaN):
    reject where the adjusted p < alpha. It keeps the chance of any false rejection in the set at
    alpha, whatever their dependence."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    valid = ~np.isnan(p)
    if valid.any():
        out[valid] = multipletests(p[valid], method="holm")[1]
    return out


def paired(table: pd.DataFrame, group: str, base: str, metric: str) -> tuple[pd.Series, str]:
    """The per-seed paired differences group - base of `metric` (from `per_seed`), and their scale:
    "log" (log ratios) for a metric the registry declares log-scale whose values are all > 0, else
    "plain". A ratio of MaxVio values is what a reader compares; their difference is dominated by
    the larger, noisier one."""
    both = table[[group, base]].dropna()
    if metric_registry.is_log_scale(metric) and (both > 0).all().all():
        return np.log(both[group]) - np.log(both[base]), "log"
    return both[group] - both[base], "plain"


def geometric_interval(x, level: float = 0.95) -> tuple[float, float, float]:
    """(geometric mean, low, high): the t-interval of the mean of log x, back on x's scale."""
    mean, low, high = t_interval(np.log(np.asarray(x, dtype=float)), level)
    return math.exp(mean), math.exp(low), math.exp(high)


def per_seed(runs: pd.DataFrame, metric: str, columns: str = "variant") -> pd.DataFrame:
    """Seeds x `columns` (groups by default): the metric's mean per cell, the table every paired
    comparison reads."""
    return runs.pivot_table(index="seed", columns=columns, values=metric, aggfunc="mean")


def group_keys(runs: pd.DataFrame) -> pd.Series:
    """Per run: {key: value} of the config keys that tell it apart from other configs of its label."""
    keys = pd.Series([{} for _ in range(len(runs))], index=runs.index, dtype=object)
    if "config_id" not in runs:
        return keys
    config_cols = [c for c in runs.columns if c.startswith(CONFIG_PREFIXES) and c not in NOT_CONFIG]
    for _, part in runs.groupby("variant", sort=False):
        configs = part.drop_duplicates("config_id")
        if len(configs) < 2:
            continue
        differing = [c for c in config_cols if configs[c].astype(str).nunique(dropna=False) > 1]
        for _, row in configs.iterrows():
            found = {c: row[c] for c in differing} or {"config_id": row["config_id"]}
            for i in part.index[part["config_id"] == row["config_id"]]:
                keys[i] = found
    return keys


def with_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with `variant` replaced by the group name: the label, plus what differs where one
    label covers several configs (`loss_free [train.steps=20]`); `label` keeps the plain label."""
    keys = group_keys(runs)
    names = [label if not k else f"{label} [" + ", ".join(f"{c}={v}" for c, v in k.items()) + "]"
             for label, k in zip(runs["variant"].astype(str), keys)]
    return runs.assign(label=runs["variant"].astype(str), variant=names, group_keys=keys)


def baseline_groups(runs: pd.DataFrame, baseline: str) -> dict[str, str]:
    """Per group: the group of the baseline label it is compared with: one at the same [grid] point
    (`x[model.family=olmoe]` meets `base[model.family=olmoe]`), and of those the one that agrees
    with it on the most distinguishing keys (`x [train.steps=20]` meets `base [train.steps=20]`)."""
    groups = runs.drop_duplicates("variant").set_index("variant")
    split = {name: _grid_point(str(label)) for name, label in groups["label"].items()}
    bases = groups[[name == baseline or split[name][0] == baseline for name in groups.index]]
    out = {}
    for name, row in groups.iterrows():
        if len(bases) == 0:
            continue
        mine, point = row["group_keys"], split[name][1]
        score = [1000 * (split[base][1] == point) +
                 sum(str(other.get(k)) == str(v) for k, v in mine.items()) +
                 sum(str(mine.get(k)) == str(v) for k, v in other.items())
                 for base, other in bases["group_keys"].items()]
        out[name] = bases.index[int(np.argmax(score))]
    return out


def _grid_point(label: str) -> tuple[str, str]:
    """("loss_free", "model.family=olmoe") from a label a [grid] wrote ("loss_free[model.family=olmoe]")."""
    match = re.fullmatch(r"(.*?)\[(.*)\]", label)
    return (match[1], match[2]) if match else (label, "")


def mean_interval(values, positive: bool = False) -> tuple[float, float, float]:
    """(mean, low, high) of a sample; see the module docstring for the two forms."""
    x = np.asarray(pd.Series(values).dropna(), dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan
    if positive and (x > 0).all():
        factor = math.exp(t975(n) * float(np.log(x).std(ddof=1)) / math.sqrt(n))
        return mean, mean / factor, mean * factor
    half = t975(n) * float(x.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_difference(x: pd.Series, base: pd.Series) -> dict:
    """Paired comparison of two per-seed Series (indexed by seed) over their common seeds."""
    both = pd.concat([x.rename("x"), base.rename("b")], axis=1).dropna()
    d = (both["x"] - both["b"]).to_numpy(dtype=float)
    n = len(d)
    out = {"n": n, "diff": float(d.mean()) if n else math.nan, "low": math.nan, "high": math.nan,
           "sd": math.nan, "seeds_needed": math.nan}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    half = t975(n) * sd / math.sqrt(n)
    out.update(sd=sd, low=out["diff"] - half, high=out["diff"] + half, seeds_needed=seeds_needed(out["diff"], sd))
    return out


def within_noise(per_seed: pd.DataFrame, best) -> list:
    """The columns of `per_seed` (seeds x configs) whose paired 95 % interval of the difference to
    column `best`, over at least 2 common seeds, contains 0: the flat optimum, `best` first."""
    out = [best]
    for column in per_seed.columns.drop(best, errors="ignore"):
        if best in per_seed:
            diff = paired_difference(per_seed[column], per_seed[best])
            if diff["n"] >= 2 and diff["low"] <= 0 <= diff["high"]:
                out.append(column)
    return out


POWER = 0.8  # the power a design is planned for (STATISTICS.md: seeds a design would need)
MAX_PLANNED_SEEDS = 1000  # beyond this a figure says "> 1000"


def seeds_needed(diff: float, sd: float, power: float = POWER, alpha: float = 0.05) -> float:
    """Seeds a paired two-sided t-test at `alpha` needs to find a true difference `diff` with
    probability `power` when the paired spread is `sd` (statsmodels' TTestPower; inf past
    MAX_PLANNED_SEEDS or for a zero difference, NaN with nothing to go on)."""
    if not (math.isfinite(diff) and math.isfinite(sd)):
        return math.nan
    if sd == 0:
        return math.nan if diff == 0 else 2.0
    if diff == 0:
        return math.inf
    # NOTE: the power of every n at once, then the first that reaches it (solve_power's root finder
    # gives up on small effects)
    n = np.arange(2, MAX_PLANNED_SEEDS + 1)
    reached = TTestPower().power(effect_size=abs(diff) / sd, nobs=n, alpha=alpha, alternative="two-sided") >= power
    return float(n[np.argmax(reached)]) if reached.any() else math.inf


def tost_power(n, diff: float, sd: float, margin: float, alpha: float = 0.05):
    """Probability that TOST at `alpha` over n paired seeds (a number or an array) shows equivalence
    within +-margin when the true difference is `diff` and the paired spread `sd`: both one-sided
    tests must reject, the noncentral-t approximation that treats them as independent given s (a
    slight under-estimate)."""
    n = np.asarray(n, dtype=float)
    if sd == 0:
        return np.where(n >= 2, float(abs(diff) < margin), 0.0)[()]
    dof = np.maximum(n - 1, 1)
    se = sd / np.sqrt(np.maximum(n, 1))
    crit = sps.t.ppf(1 - alpha, dof)
    above = sps.nct.sf(crit, dof, (diff + margin) / se)  # (dbar + m) / se > crit
    below = sps.nct.cdf(-crit, dof, (diff - margin) / se)  # (dbar - m) / se < -crit
    return np.where(n >= 2, np.maximum(0.0, above + below - 1.0), 0.0)[()]


def seeds_to_equivalence(diff: float, sd: float, margin: float, power: float = POWER, alpha: float = 0.05) -> float:
    """Smallest n whose TOST shows equivalence within +-margin with probability `power` at a true
    difference `diff` and paired spread `sd` (inf when |diff| >= margin or past MAX_PLANNED_SEEDS)."""
    if not (math.isfinite(diff) and math.isfinite(sd)) or abs(diff) >= margin:
        return math.inf
    n = np.arange(2, MAX_PLANNED_SEEDS + 1)
    reached = tost_power(n, diff, sd, margin, alpha) >= power
    return float(n[np.argmax(reached)]) if reached.any() else math.inf


def is_positive_metric(metric: str) -> bool:
    """Positive by nature (declared in the metric registry): its mean's interval is on the log scale."""
    return metric_registry.is_positive(metric)


def comparison(runs: pd.DataFrame, metrics: list[str], baseline: str) -> pd.DataFrame:
    """Long table: per group and metric, the mean with its interval, and the paired difference to
    the group of label `baseline` that matches it (`baseline_groups`).

    `runs` are the runs to compare, with groups from `with_groups`.
    """
    rows = []
    bases = baseline_groups(runs, baseline)
    for metric in [m for m in metrics if m in runs]:
        table = per_seed(runs, metric)
        for group, part in runs.groupby("variant", sort=False):
            mean, low, high = mean_interval(part[metric], positive=is_positive_metric(metric))
            row = {"variant": group, "metric": metric, "n": int(part[metric].notna().sum()), "mean": mean,
                   "low": low, "high": high, "baseline": bases.get(group, "")}
            base = bases.get(group)
            if base and base != group and base in table and group in table:
                row.update({f"paired_{k}": v for k, v in paired_difference(table[group], table[base]).items()})
            rows.append(row)
    return pd.DataFrame(rows)
