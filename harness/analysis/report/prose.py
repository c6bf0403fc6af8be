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


def seeds_needed(r: dict) -> float:
    """The seeds an inconclusive comparison's design would need for 80 % power at the observed
    difference and spread: the fewer of equivalence and difference (NaN where neither applies)."""
    values = [v for v in (r.get("seeds_to_equivalence", math.nan), r.get("seeds_to_difference", math.nan))
              if v == v]
    return min(values) if values else math.nan


def seeds_to_resolve(table: pd.DataFrame) -> list[str]:
    """For an inconclusive comparison: the seeds a design would need (power 0.8)."""
    out = []
    for r in table.to_dict("records"):
        need = seeds_needed(r)
        out.append("" if not str(r["verdict"]).startswith("inconclusive") or not need == need else
                   ("> 1000" if math.isinf(need) else str(int(need))))
    return out


def shown_difference(r: dict) -> str:
    """`+0.012 [-0.004, +0.028]`, or for log ratios `x0.52 [x0.31, x0.87]`."""
    return verdicts.shown(r.get("diff"), r.get("low95"), r.get("high95"), r.get("scale", "plain"))


def could_answer(table: pd.DataFrame) -> list[str]:
    """Per primary comparison: what the suite's seeds answered, or the seeds it would have needed."""
    primary = table[table["role"] == verdicts.PRIMARY] if "role" in table else table.iloc[:0]
    if not len(primary):
        return ["The suite declared no primary comparisons (`primary = [...]`): it set out to answer no question "
                "under error control, so every verdict below is exploratory."]
    lines = []
    for r in primary.to_dict("records"):
        name = f"{r['variant']} vs {r['against']} ({r['metric']})"
        if str(r["verdict"]).startswith(("inconclusive", "not distinguishable", "mixed", "withheld")):
            need = seeds_needed(r)
            more = ("no number of seeds would at this difference" if need == math.inf else
                    f"about {int(need)} seeds would (power 0.8 at the observed spread)" if need == need else
                    "no estimate of the seeds it needs")
            lines.append(f"{name}: not answered at {int(r['n'])} seeds; {more}")
        else:
            lines.append(f"{name}: answered, {r['verdict']}")
    return lines


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
    primary = table[table["role"] == verdicts.PRIMARY] if "role" in table else table.iloc[:0]
    if not len(primary):
        return ("Every verdict here is exploratory: its test judged alone at 0.05, unadjusted (the suite named no "
                "primary comparisons). Intervals are 95 %, unadjusted. ")
    return (f"The primary comparisons ({len(primary)} rows; {primary['correction'].iloc[0]}) are the suite's "
            "pre-registered questions; every other row is exploratory, judged alone, unadjusted (column "
            "'error control'). Intervals are 95 %, unadjusted. ")


def tests_note(table: pd.DataFrame) -> str:
    """Which test each comparison used: the seed-blocked model with its homogeneity test, or the
    paired t-test on the pair's own seeds (blocked.py), one sentence per baseline and metric."""
    if "test" not in table:
        return ""
    parts = []
    for (against, metric), rows in table.dropna(subset=["test"]).groupby(["against", "metric"], sort=False):
        used = rows["test"].unique()
        parts.append(f"against {against} on {metric}: {'; '.join(used)}")
    return ("Tests: " + "; ".join(parts) + ". A seed-blocked model pools the residual spread of every variant "
            "run on the same seeds, used only where the homogeneity test does not reject. ") if parts else ""


def add_verdicts(page: Page, runs: pd.DataFrame) -> bool:
    """A verdict per comparison, and the `verdicts.parquet` table beside the report; whether there were any."""
    table = verdict_table(runs)
    if not len(table):
        return False
    tables.write_parquet_atomic(page.folder / "verdicts.parquet", table)
    adjusted = [f"{c}_adjusted" for c in verdicts.P_COLUMNS if f"{c}_adjusted" in table]
    shown = pd.DataFrame({
        "variant": table["variant"], "against": table["against"], "metric": table["metric"],
        "difference [95 % CI]": [shown_difference(r) for r in table.to_dict("records")],
        "verdict": table["verdict"], "seeds": seeds_used(table),
        "p": [f"{p:.3g}" if pd.notna(p) else "" for p in table[adjusted].min(axis=1)] if adjusted else "",
        "error control": table["role"] if "role" in table else "",
        "seeds for 80 % power": seeds_to_resolve(table)}).set_index("variant")
    if "reason" in table:
        shown["stopped because"] = table["reason"].fillna("").to_numpy()
    page.section("Verdicts")
    page.text("What this suite could answer:")
    page.bullets(could_answer(table))
    reach = family_lines(runs)
    if reach:
        page.text("How far each reference family got:")
        page.bullets(reach)
    page.bullets(verdict_summary(table))
    page.table(shown)
    page.text(VERDICT_NOTE + correction_note(table) + tests_note(table) + "The table is also in verdicts.parquet.")
    return True


VERDICT_NOTE = ("Against a front: per seed the reference family's non-dominated points (its Pareto front in MaxVio "
                "and val loss; dominated members are left out). A method's seed is inside the front's MaxVio range "
                "(its distance is its loss minus the front's, interpolated in log MaxVio), beyond its most balanced "
                "point, or past its least balanced one (its loss minus that end point's: a bound, which can show "
                "'better' beyond and 'worse' past, never the reverse). One t-test over all the seeds: 'beats the "
                "front' or 'worse than the front' where it rejects, 'mixed' where the seeds sit on both sides of the "
                "front's range, else 'not distinguishable from the front' with the distance and its interval. "
                "Equivalence (TOST): 'equivalent within' when the 90 % paired interval lies inside the margin, 'not "
                "equivalent' when the 95 % interval lies beyond it, 'different' when the test of 0 rejects, "
                "'inconclusive' with the seeds a design would need otherwise; MaxVio is compared by ratios (x), its "
                "margin relative. '(runs not settled)': a run behind the verdict was still balancing over its last "
                "quarter (steady state, docs/methods.md). "
                "Sequential seeds: each look spends part of alpha (docs/methods.md, 'Seeds that stop'), so a "
                "verdict there holds although the seeds stopped on the data. ")
