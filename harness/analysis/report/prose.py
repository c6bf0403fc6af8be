"""The report's verdicts in words: one line per method (its place against each reference front,
its verdict against the baseline, the seeds behind it and why they stopped), and the verdicts
table beside the report (verdicts.parquet). analysis/verdicts.py decides them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness import tables
from harness.analysis import stats, verdicts
from harness.analysis.report.page import Page
from harness.analysis.report.summary import baseline_label


def verdict_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The `verdicts` table of a suite's runs: against the front, and TOST equivalence (verdicts.py)."""
    ok = stats.with_groups(runs[runs["status"] == "ok"])
    if not len(ok):
        return pd.DataFrame()
    return verdicts.verdicts(ok, stats.baseline_groups(ok, baseline_label(ok)))[0]


def seeds_used(table: pd.DataFrame) -> pd.Series:
    """Seeds behind each verdict: inside the front's range, or paired with the baseline."""
    used = pd.Series(np.nan, index=table.index)
    for column in ("seeds_inside", "n"):
        if column in table:
            used = used.fillna(table[column])
    return used.astype("Int64")


def seeds_to_resolve(table: pd.DataFrame) -> list[str]:
    """For an unresolved equivalence: the seeds that would settle it either way at the observed spread."""
    out = []
    for r in table.to_dict("records"):
        need = min(r.get("seeds_to_equivalence", math.nan), r.get("seeds_to_difference", math.nan))
        out.append("" if r["verdict"] != "unresolved" or not need == need else
                   ("> 1000" if math.isinf(need) else str(int(need))))
    return out


def verdict_summary(table: pd.DataFrame) -> list[str]:
    """One line per method: its place against the front, its verdict against the baseline (the
    sequential design's where the suite has one), the seeds behind it and why they stopped."""
    lines = []
    for variant, rows in table.groupby("variant", sort=False):
        parts = []
        for r in rows.to_dict("records"):
            interval = f" ({r['diff']:+.3g} [{r['low95']:+.3g}, {r['high95']:+.3g}])" if pd.notna(r.get("low95")) else ""
            if r["kind"] == "front":
                named = r["verdict"] if r["against"] == "front" else r["verdict"].replace(
                    "the front's MaxVio range", f"the MaxVio range of the front '{r['against']}'").replace(
                    "the front", f"the front '{r['against']}'")
                parts.append(f"{named}{interval}")
            else:
                verdict = r["verdict"]
                verdict = f"{verdict} from" if verdict == "different" else verdict if verdict == "running" else \
                    f"{verdict} against"
                parts.append(f"{verdict} {r['against']} on {r['metric']}{interval}")
        seq = rows[rows["kind"] == "sequential"]
        if len(seq):
            parts.append(f"{int(seq['n'].iloc[0])} seeds: {seq['reason'].iloc[0]}")
        else:
            used = seeds_used(rows).dropna()
            parts.append(f"{int(used.max())} seeds" if len(used) else "no seeds")
        lines.append(f"{variant}: " + "; ".join(parts))
    return lines


def add_verdicts(page: Page, runs: pd.DataFrame) -> bool:
    """A verdict per comparison, and the `verdicts.parquet` table beside the report; whether there were any."""
    table = verdict_table(runs)
    if not len(table):
        return False
    tables.write_parquet_atomic(page.folder / "verdicts.parquet", table)
    shown = pd.DataFrame({
        "variant": table["variant"], "against": table["against"], "metric": table["metric"],
        "difference [95 % CI]": [f"{r.diff:+.3g} [{r.low95:+.3g}, {r.high95:+.3g}]" if pd.notna(r.low95)
                                 else f"{r.diff:+.3g}" for r in table.itertuples()],
        "verdict": table["verdict"], "seeds": seeds_used(table),
        "seeds to resolve": seeds_to_resolve(table)}).set_index("variant")
    if "reason" in table:
        shown["stopped because"] = table["reason"].fillna("").to_numpy()
    page.section("Verdicts")
    page.bullets(verdict_summary(table))
    page.table(shown)
    page.text("Against the front: the val-loss distance to the reference family's front at the method's own "
              "MaxVio, interpolated per seed between the bracketing family points (seeds outside the family's "
              "MaxVio range give none); below / above when the 95 % interval excludes 0. Equivalence (TOST): "
              "'equivalent' when the 90 % paired interval lies inside +/- the margin, 'different' when the 95 % "
              "interval excludes 0, else 'unresolved'. Sequential seeds: each look spends part of alpha "
              "(docs/methods.md, 'Seeds that stop'), so a verdict there holds although the seeds stopped on the "
              "data. The table is also in verdicts.parquet.")
    return True
