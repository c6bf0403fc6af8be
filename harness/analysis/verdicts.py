"""Verdicts on top of the paired tables: where a method stands against a reference front at its
own balance (front.py), and whether two methods differ or are the same within a margin
(docs/methods.md, "Verdicts"). Each word names the test that passed:

    equivalent within +/- m   TOST (Schuirmann 1987; statsmodels' ttost_paired): both one-sided
                              tests reject, the 90 % interval lies inside (-m, m)
    not equivalent            the 95 % interval lies beyond the margin on one side (|d| > m rejects)
    different                 the two-sided paired t-test of d = 0 rejects
    equivalent ... and different   both: a real but small difference
    inconclusive, d [CI]      none of these; printed with the seeds a design would need (power 0.8)

A metric the registry declares log-scale (MaxVio: positive and skewed) is compared by log ratios,
d = log x - log x_base, and its margin is relative: m = 0.1 means within x1.1 either way.

Error control. A suite names its pre-registered comparisons (`primary = ["smebu vs loss_free",
"dual_ascent vs front"]`); Holm's adjustment (unless `correction = "none"`) keeps the chance of
any false rejection among exactly those tests at 0.05. Every other comparison is exploratory:
judged on its unadjusted p, and labelled so beside its figure. A suite without `primary` has
exploratory comparisons only. A suite with sequential seeds judges its metric by the design of
sequential.py (alpha spent over planned looks).
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.weightstats import ttost_paired

from harness.analysis import blocked, front, sequential, stats

ALPHA = 0.05
CORRECTIONS = ("holm", "none")
P_COLUMNS = ("p", "p_tost", "p_diff", "p_noneq")  # every p-value a verdict row may carry
PRIMARY, EXPLORATORY = "primary", "exploratory"


def tost(d, margin: float | None, pooled: tuple[float, float, float] | None = None) -> dict:
    """Per-seed paired differences `d`: their difference from 0 and, with a margin, TOST and the
    beyond-the-margin test; the verdict of this one comparison, unadjusted (module docstring).
    `pooled` = (estimate, standard error, degrees of freedom) from the seed-blocked model
    (blocked.py) replaces the pair's own mean and spread; the seeds counted stay the pair's."""
    d = np.asarray(pd.Series(d).dropna(), dtype=float)
    n, mean = len(d), float(d.mean()) if len(d) else math.nan
    out = {"n": n, "diff": mean, "low90": math.nan, "high90": math.nan, "low95": math.nan, "high95": math.nan,
           "p_tost": math.nan, "p_diff": math.nan, "p_noneq": math.nan, "sd": math.nan, "dof": math.nan,
           "seeds_to_equivalence": math.nan, "seeds_to_difference": math.nan}
    if n >= 2:
        sd, dof = float(d.std(ddof=1)), float(n - 1)
        se = sd / math.sqrt(n)
        if pooled is not None:
            mean, se, dof = pooled
            sd = se * math.sqrt(n)  # NOTE: the per-seed spread of a difference the pooled error implies
        half90, half95 = stats.t_quantile(0.95, dof) * se, stats.t_quantile(0.975, dof) * se
        out.update(diff=mean, sd=sd, dof=dof, low90=mean - half90, high90=mean + half90, low95=mean - half95,
                   high95=mean + half95, seeds_to_difference=stats.seeds_needed(mean, sd),
                   p_diff=stats.t_test_p(d) if pooled is None else
                   min(1.0, 2 * min(blocked.one_sided(mean, se, dof, 0.0, True),
                                    blocked.one_sided(mean, se, dof, 0.0, False))))
        if margin is not None:
            p_tost = (tost_p(d, margin) if pooled is None else
                      max(blocked.one_sided(mean, se, dof, -margin, False), blocked.one_sided(mean, se, dof, margin, True)))
            out.update(p_tost=p_tost, p_noneq=beyond_margin_p(mean, se, dof, margin),
                       seeds_to_equivalence=stats.seeds_to_equivalence(mean, sd, margin))
    out["verdict"] = equivalence_words(out, f"±{margin:g}" if margin is not None else "")
    return out


def tost_p(d: np.ndarray, margin: float) -> float:
    """TOST's p (the larger one-sided p), from statsmodels."""
    if float(d.std(ddof=1)) == 0:  # NOTE: statsmodels divides by the spread; none is a plain comparison
        return float(abs(d.mean()) >= margin)
    return float(ttost_paired(d, np.zeros_like(d), -margin, margin)[0])


def beyond_margin_p(mean: float, se: float, dof: float, margin: float) -> float:
    """Two-sided p of "|d| <= m" against "|d| > m": below 0.05 where the 95 % interval lies beyond
    the margin on one side (twice the one-sided p on the side of the mean)."""
    if se == 0:
        return float(abs(mean) <= margin)
    return float(min(1.0, 2 * sps.t.sf((abs(mean) - margin) / se, dof)))


def shown(diff: float, low: float, high: float, scale: str = "plain") -> str:
    """`+0.012 [-0.004, +0.028]`, or for log ratios `x0.52 [x0.31, x0.87]`; no interval from one seed."""
    if pd.isna(diff):
        return "–"
    if scale == "log":
        return f"x{math.exp(diff):.3g}" + (f" [x{math.exp(low):.3g}, x{math.exp(high):.3g}]" if pd.notna(low) else "")
    return f"{diff:+.3g}" + (f" [{low:+.3g}, {high:+.3g}]" if pd.notna(low) else "")


def equivalence_words(row: dict, label: str, adjusted: bool = False) -> str:
    """The verdict of one comparison from its p-values (the adjusted ones where `adjusted`)."""
    def below(name: str) -> bool:
        value = row.get(f"{name}_adjusted" if adjusted else name, math.nan)
        return bool(value < ALPHA)

    if below("p_tost"):
        return f"equivalent within {label} and different" if below("p_diff") else f"equivalent within {label}"
    if below("p_noneq"):
        return "not equivalent"
    if below("p_diff"):
        return "different"
    return f"inconclusive, d = {shown(row['diff'], row['low95'], row['high95'], row.get('scale', 'plain'))}"


def equivalence_table(runs: pd.DataFrame, margins: dict[str, float | None], bases: dict[str, str]) -> pd.DataFrame:
    """Per group and metric: the comparison with the group it meets (`bases`, from
    stats.baseline_groups) over the seeds both have, with TOST at the metric's margin (a margin of
    None: the difference test alone, kind "difference"); log ratios for a log-scale metric, against
    the relative margin log(1 + m). Each baseline and the groups it meets form one seed-blocked
    model (blocked.py), whose pooled error is used where its variants scatter alike."""
    rows = []
    for metric, margin in margins.items():
        if metric not in runs:
            continue
        table = stats.per_seed(runs, metric)
        meeting: dict[str, list[str]] = {}
        for group, base in bases.items():
            meeting.setdefault(base, []).append(group)
        for base, groups in meeting.items():
            members = [g for g in groups if g != base and g in table]
            if base not in table or not members:
                continue
            log = stats.paired(table, members[0], base, metric)[1] == "log"
            model = blocked.fit(table[[base, *members]], log)
            for group in members:
                d, scale = stats.paired(table, group, base, metric)
                limit = None if margin is None else math.log1p(margin) if scale == "log" else margin
                pooled = (*model.contrast(group, base), model.dof) if model.pooled and scale == ("log" if log else "plain") else None
                result = tost(d, limit, pooled)
                label = margin_label(margin, scale) if margin is not None else ""
                rows.append({"kind": "equivalence" if margin is not None else "difference", "variant": group,
                             "against": base, "metric": metric, "margin": math.nan if margin is None else margin,
                             "scale": scale, **result, "test": model.test() if (pooled is not None) == model.pooled else blocked.PAIRED,
                             "homogeneity_p": model.homogeneity_p,
                             "verdict": equivalence_words({**result, "scale": scale}, label)})
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


def recorded_primary(runs: pd.DataFrame) -> list[str]:
    """The suite's `primary` comparisons, as its runs recorded them (none for older runs)."""
    return json.loads(recorded(runs, "primary", "[]"))


def label_of(name: str) -> str:
    """A group's or front's label without its [grid] point or distinguishing keys."""
    return re.split(r" ?\[", str(name), maxsplit=1)[0]


def split_entry(entry: str) -> tuple[str, str]:
    """("smebu", "loss_free") from "smebu vs loss_free"."""
    a, _, b = entry.partition(" vs ")
    return a.strip(), b.strip()


def is_primary(row: dict, entries: list[str], baseline: str) -> bool:
    """Whether a verdict row is one of the suite's pre-registered comparisons."""
    mine, theirs = label_of(row["variant"]), label_of(row["against"])
    for a, b in map(split_entry, entries):
        if a != mine:
            continue
        if row["kind"] == "front" and b in (theirs, "front"):
            return True
        if row["kind"] != "front" and (b == theirs or (b == "baseline" and theirs == baseline)):
            return True
    return False


def pair_bases(runs: pd.DataFrame, entries: list[str], baseline: str, fronts: set[str]) -> dict[str, dict[str, str]]:
    """For each primary comparison with a variant other than the baseline (a pair): label -> {group
    of the first -> the group of the second it meets}."""
    out = {}
    for a, b in map(split_entry, entries):
        if b in ("baseline", baseline, "front") or b in fronts:
            continue
        labels = runs["variant"].map(label_of)
        meets = stats.baseline_groups(runs[labels.isin([a, b])], b)
        out.setdefault(b, {}).update({g: base for g, base in meets.items() if label_of(g) == a})
    return out


def verdicts(runs: pd.DataFrame, bases: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the `verdicts` table: front, equivalence, difference and sequential rows, long form,
    decided after the suite's error control; the per-seed places against the fronts)."""
    parts, found = front_rows(runs)
    distances = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
    margins, plan, family = recorded_margins(runs), sequential.recorded_plan(runs), front_mask(runs)
    entries = recorded_primary(runs)
    baseline = label_of(next(iter(bases.values()), "")) if bases else ""
    # NOTE: without a margin, a comparison with the baseline or a pair is the difference test on val loss
    tested = margins or ({"val_loss": None} if entries else {})
    if tested:
        table = equivalence_table(runs, tested, bases)
        if not margins and len(table):  # only the pre-registered ones: there is no margin to judge the rest by
            table = table[[is_primary(r, entries, baseline) for r in table.to_dict("records")]]
        # NOTE: a sequential suite's verdict on its metric is the design's (alpha spent over its looks)
        parts.append(table[table["metric"] != plan.metric] if plan is not None and len(table) else table)
    fronts = set(families_of(runs, family).dropna())
    for _, pairs in pair_bases(runs[~family], entries, baseline, fronts).items():
        parts.append(equivalence_table(runs, tested or {"val_loss": None}, pairs))
    if plan is not None:
        parts.append(sequential.decisions(runs[~family], plan, {g: b for g, b in bases.items()
                                                                if g in set(runs.loc[~family, "variant"])}, margins))
    table = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else pd.DataFrame()
    table = decide(table, recorded(runs, "correction", "holm"), entries, baseline)
    return mark_unsettled(table, runs, bool(recorded(runs, "require_settled", False))), distances


def mark_unsettled(table: pd.DataFrame, runs: pd.DataFrame, withhold: bool) -> pd.DataFrame:
    """Each verdict with the runs behind it whose balance is still moving (steady_state.py): named in
    `unsettled` and said beside the word, or, where the suite requires settled runs, the verdict
    withheld. Runs with no steady-state record are not counted either way."""
    if not len(table) or "settled" not in runs:
        return table
    table, labels = table.copy(), family_labels(runs)
    notes = []
    for r in table.to_dict("records"):
        involved = runs[(runs["variant"] == r["variant"]) | ((labels == r["against"]) if r["kind"] == "front"
                                                             else (runs["variant"] == r["against"]))]
        moving = involved[involved["settled"].astype("boolean").eq(False).fillna(False).astype(bool)]
        notes.append(", ".join(f"{v} on {len(part)} of {int((involved['variant'] == v).sum())} seeds"
                               for v, part in moving.groupby("variant", sort=False)))
    table["unsettled"] = notes
    for i, note in zip(table.index, notes):
        if note:
            table.at[i, "verdict"] = (f"withheld: runs not settled ({note})" if withhold
                                      else f"{table.at[i, 'verdict']} (runs not settled)")
    return table


def decide(table: pd.DataFrame, correction: str, entries: list[str] | None = None, baseline: str = "") -> pd.DataFrame:
    """The verdicts from their p-values: the primary comparisons' tests Holm-adjusted as one set
    (unless `correction` is "none"), every other test judged alone and labelled exploratory; the
    values each verdict used in p_*_adjusted columns."""
    if not len(table):
        return table
    table = table.copy()
    entries = entries or []
    table["role"] = [PRIMARY if is_primary(r, entries, baseline) else EXPLORATORY for r in table.to_dict("records")]
    columns = [c for c in P_COLUMNS if c in table]
    values = table[columns].to_numpy(float)
    primary = (table["role"] == PRIMARY).to_numpy()
    adjusted = values.copy()
    if correction == "holm" and primary.any():
        adjusted[primary] = stats.holm(values[primary].ravel()).reshape(values[primary].shape)
    for j, column in enumerate(columns):
        table[f"{column}_adjusted"] = adjusted[:, j]
    tests = int((~np.isnan(values[primary])).sum())
    table["correction"] = np.where(primary, f"holm over {tests} primary test(s)" if correction == "holm" and tests
                                   else "none", "none (exploratory)")
    for i, row in table.iterrows():
        if row["kind"] == "front":
            table.at[i, "verdict"] = front.place_verdict(row.to_dict())
        elif row["kind"] in ("equivalence", "difference"):
            label = margin_label(row["margin"], row["scale"]) if pd.notna(row["margin"]) else ""
            table.at[i, "verdict"] = equivalence_words(row.to_dict(), label, adjusted=True)
        elif row["kind"] == "sequential" and row["verdict"] == "unresolved":
            table.at[i, "verdict"] = (f"inconclusive at the design's max ({int(row['n'])} seeds), d = "
                                      f"{shown(row['diff'], row['low95'], row['high95'], row['scale'])}")
    return table
