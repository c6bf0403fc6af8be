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

Seeds needed to resolve a difference: the smallest n with t_{0.975, n-1} s_d / sqrt(n) < |dbar|,
taking the observed s_d as the true spread (a planning figure, not a power analysis).

Per-variant means of a metric that is positive by nature (MaxVio, tokens/s, throughput ratio)
get an interval on the log scale, which never crosses zero:
    m = mean(x),  s_l = sd(log x),  interval [m / f, m * f],  f = exp(t_{0.975, n-1} s_l / sqrt(n));
other metrics (losses) get the plain t-interval m -/+ t s / sqrt(n).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness import metric_registry

# NOTE: columns that identify or describe a run rather than configure it; left out of group names
NOT_CONFIG = {"run_id", "config_id", "seed", "variant", "suite", "baseline", "trial"}
CONFIG_PREFIXES = ("model.", "router.", "train.", "data.", "metrics.")  # the resolved config's columns


def t975(n: int) -> float:
    """Two-sided 95 % Student t quantile for a sample of n (n - 1 degrees of freedom)."""
    return float(sps.t.ppf(0.975, n - 1)) if n > 1 else math.nan


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
    """Per group: the group of the baseline label it is compared with, the one that agrees with it
    on the most distinguishing keys (so `x [train.steps=20]` meets `base [train.steps=20]`)."""
    groups = runs.drop_duplicates("variant").set_index("variant")
    bases = groups[(groups["label"] == baseline) | (groups.index == baseline)]
    out = {}
    for name, row in groups.iterrows():
        if len(bases) == 0:
            continue
        mine = row["group_keys"]
        score = [sum(str(other.get(k)) == str(v) for k, v in mine.items()) +
                 sum(str(mine.get(k)) == str(v) for k, v in other.items())
                 for other in bases["group_keys"]]
        out[name] = bases.index[int(np.argmax(score))]
    return out


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


def seeds_needed(diff: float, sd: float, limit: int = 1000) -> float:
    """Smallest n whose 95 % paired interval half-width t s / sqrt(n) is below |diff| (inf past `limit`)."""
    if diff == 0 or not math.isfinite(diff):
        return math.nan if sd == 0 else math.inf  # nothing to resolve / a zero mean never separates
    if sd == 0:
        return 2.0
    for n in range(2, limit + 1):
        if t975(n) * sd / math.sqrt(n) < abs(diff):
            return float(n)
    return math.inf


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
        per_seed = runs.pivot_table(index="seed", columns="variant", values=metric, aggfunc="mean")
        for group, part in runs.groupby("variant", sort=False):
            mean, low, high = mean_interval(part[metric], positive=is_positive_metric(metric))
            row = {"variant": group, "metric": metric, "n": int(part[metric].notna().sum()), "mean": mean,
                   "low": low, "high": high, "baseline": bases.get(group, "")}
            base = bases.get(group)
            if base and base != group and base in per_seed and group in per_seed:
                row.update({f"paired_{k}": v for k, v in paired_difference(per_seed[group], per_seed[base]).items()})
            rows.append(row)
    return pd.DataFrame(rows)
