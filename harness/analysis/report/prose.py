"""The report's verdicts in words: one line per method (its place against each reference front,
its verdict against the baseline, the seeds behind it and why they stopped), and the verdicts
table beside the report (verdicts.parquet). analysis/verdicts.py decides them."""

from __future__ import annotations

import math

import pandas as pd

from harness import tables
from harness.analysis import front, stats, verdicts
from harness.analysis.report.page import Page
from harness.analysis.report.summary import baseline_label


def verdict_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The `verdicts` table of a suite's runs: against the fronts, equivalence, sequential (verdicts.py)."""
    ok = stats.with_groups(runs[runs["status"] == "ok"])
    if not len(ok):
        return pd.DataFrame()
    return verdicts.verdicts(ok, stats.baseline_groups(ok, baseline_label(ok)))[0]


def family_lines(runs: pd.DataFrame) -> list[str]:
    """How far each reference family got, and which of its members are dominated (front.py)."""
    ok = runs[runs["status"] == "ok"]
    labels = verdicts.family_labels(ok)
    return [front.family_reach(ok[labels == name], name) for name in labels.dropna().unique()]


def seeds_used(table: pd.DataFrame) -> pd.Series:
    """Seeds behind each verdict: in the method's place against the front, or paired with the baseline."""
    return table["n"].astype("Int64") if "n" in table else pd.Series(pd.NA, index=table.index, dtype="Int64")


def seeds_to_resolve(table: pd.DataFrame) -> list[str]:
    """For an unresolved equivalence: the seeds that would settle it either way at the observed spread."""
    out = []
    for r in table.to_dict("records"):
        need = min(r.get("seeds_to_equivalence", math.nan), r.get("seeds_to_difference", math.nan))
        out.append("" if r["verdict"] != "unresolved" or not need == need else
                   ("> 1000" if math.isinf(need) else str(int(need))))
    return out


def shown_difference(r: dict) -> str:
    """`+0.012 [-0.004, +0.028]`, or for log ratios `x0.52 [x0.31, x0.87]`."""
    if r.get("scale") == "log":
        ratio = f"x{math.exp(r['diff']):.3g}"
        return ratio + (f" [x{math.exp(r['low95']):.3g}, x{math.exp(r['high95']):.3g}]" if pd.notna(r["low95"]) else "")
    if pd.isna(r.get("diff")):
        return "–"
    return f"{r['diff']:+.3g}" + (f" [{r['low95']:+.3g}, {r['high95']:+.3g}]" if pd.notna(r.get("low95")) else "")


def verdict_part(r: dict) -> str:
    """One comparison of the summary line, in words with its numbers."""
    if r["kind"] == "front":
        seeds = f", seeds {r['seeds_there']}" if r.get("seeds_there") else ""
        against = "the front" if r["against"] == "front" else f"the front '{r['against']}'"
        return f"against {against}: {r['verdict']} ({shown_difference(r)} in val loss{seeds})"
    verdict = r["verdict"]
    joined = f"{verdict} from" if verdict == "different" else verdict if verdict == "running" else f"{verdict} against"
    return f"{joined} {r['against']} on {r['metric']} ({shown_difference(r)})"


def verdict_summary(table: pd.DataFrame) -> list[str]:
    """One line per method: its place against each front, its verdict against the baseline (the
    sequential design's where the suite has one), the seeds behind it and why they stopped."""
    lines = []
    for variant, rows in table.groupby("variant", sort=False):
        parts = [verdict_part(r) for r in rows.to_dict("records")]
        seq = rows[rows["kind"] == "sequential"]
        if len(seq):
            parts.append(f"{int(seq['n'].iloc[0])} seeds: {seq['reason'].iloc[0]}")
        lines.append(f"{variant}: " + "; ".join(parts))
    return lines


def correction_note(table: pd.DataFrame) -> str:
    tests = sum(int(table[c].notna().sum()) for c in ("p", "p_tost", "p_diff") if c in table)
    if "correction" in table and (table["correction"] == "holm").any():
        return (f"Verdicts are Holm-adjusted over the suite's {tests} tests (column p (Holm): the smallest adjusted "
                "p of the row); intervals are unadjusted 95 %. A suite with correction = \"none\" judges each test "
                "alone. ")
    return "Each verdict judges its test alone (correction = \"none\" or a single test). "


def add_verdicts(page: Page, runs: pd.DataFrame) -> bool:
    """A verdict per comparison, and the `verdicts.parquet` table beside the report; whether there were any."""
    table = verdict_table(runs)
    if not len(table):
        return False
    tables.write_parquet_atomic(page.folder / "verdicts.parquet", table)
    adjusted = [c for c in ("p_adjusted", "p_tost_adjusted", "p_diff_adjusted") if c in table]
    shown = pd.DataFrame({
        "variant": table["variant"], "against": table["against"], "metric": table["metric"],
        "difference [95 % CI]": [shown_difference(r) for r in table.to_dict("records")],
        "verdict": table["verdict"], "seeds": seeds_used(table),
        "p (Holm)": [f"{p:.3g}" if pd.notna(p) else "" for p in table[adjusted].min(axis=1)] if adjusted else "",
        "seeds to resolve": seeds_to_resolve(table)}).set_index("variant")
    if "reason" in table:
        shown["stopped because"] = table["reason"].fillna("").to_numpy()
    page.section("Verdicts")
    reach = family_lines(runs)
    if reach:
        page.text("How far each reference family got:")
        page.bullets(reach)
    page.bullets(verdict_summary(table))
    page.table(shown)
    page.text(VERDICT_NOTE + correction_note(table) + "The table is also in verdicts.parquet.")
    return True


VERDICT_NOTE = ("Against a front: per seed the reference family's non-dominated points (its Pareto front in MaxVio "
                "and val loss; dominated members are left out). A method's seed is inside the front's MaxVio range "
                "(its distance is its loss minus the front's, interpolated in log MaxVio), beyond its most balanced "
                "point, or past its least balanced one (its loss against that end point; nothing is extrapolated). "
                "A verdict takes the place most seeds share and needs 3 seeds there: below / above the front when "
                "the distance differs from 0, beyond the front (dominates) when the method is more balanced at no "
                "higher mean loss, dominated when it is less balanced at no lower mean loss. Equivalence (TOST): "
                "'equivalent' when the 90 % paired interval lies inside the margin, 'different' when the difference "
                "from 0 is resolved, both when both hold; MaxVio is compared by ratios (x), its margin relative. "
                "Sequential seeds: each look spends part of alpha (docs/methods.md, 'Seeds that stop'), so a "
                "verdict there holds although the seeds stopped on the data. ")
