"""The report's tables: means over seeds with intervals, what imbalance costs, and the paired
comparison with the baseline, as DataFrames a page prints (analysis/stats.py does the numbers)."""

from __future__ import annotations

import math

import pandas as pd

from harness import metric_registry
from harness.analysis import stats
from harness.analysis.report.page import Page


def spec_of(metrics) -> dict[str, tuple]:
    """metric -> (label, better, number format), from the metric registry."""
    return {m.name: (m.label, m.better, m.fmt) for m in metrics}


def summary_metrics_spec() -> dict[str, tuple]:
    return spec_of(metric_registry.summary_metrics())


def cost_metrics_spec(columns) -> dict[str, tuple]:
    """The second table's metrics, as the runs have them: what a load pattern would cost at each
    simulated EP size and capacity factor (metrics.py), plus the method-specific diagnostics."""
    return spec_of(metric_registry.cost_metrics(columns))


def baseline_label(runs: pd.DataFrame) -> str:
    """The suite's named baseline (its runs record it), else the first variant run."""
    if "baseline" in runs and runs["baseline"].notna().any():
        return str(runs["baseline"].dropna().iloc[-1])
    return str(runs["label"].iloc[0]) if "label" in runs else str(runs["variant"].iloc[0])


def reliable_throughput(runs: pd.DataFrame) -> bool:
    return "throughput_reliable" not in runs or bool(runs["throughput_reliable"].fillna(True).all())


def summary_spec(runs: pd.DataFrame) -> dict[str, tuple]:
    """The summary metrics, plus bits per byte beside val loss when any run is on subword tokens
    (val loss is per token, so only bits per byte compares tokenizers)."""
    summary = summary_metrics_spec()
    if "data.tokenizer" in runs and (runs["data.tokenizer"].fillna("bytes") != "bytes").any():
        return {"val_loss": summary["val_loss"], **spec_of([metric_registry.get_metric("val_bpb")]), **summary}
    return summary


def summary_table(runs: pd.DataFrame, spec: dict[str, tuple] | None = None) -> pd.DataFrame:
    """Per group (label + what differs): runs, and per metric of `spec` (default: the summary metrics)
    mean [95 % interval] (stats.py); '–' where a group lacks the metric. Bold: the best mean;
    tokens/s is not ranked when any run's machine was contended. Rows by global MaxVio."""
    spec = summary_metrics_spec() if spec is None else spec
    ok = stats.with_groups(runs[runs["status"] == "ok"])
    metrics = [m for m in spec if m in ok and ok[m].notna().any()]
    table = stats.comparison(ok, metrics, baseline_label(ok)) if len(ok) else pd.DataFrame()
    out = pd.DataFrame(index=pd.Index(ok["variant"].unique(), name="variant"))
    out["runs"] = ok.groupby("variant").size()
    for metric in metrics:
        rows = table[table["metric"] == metric].set_index("variant")
        label, better, fmt = spec[metric]
        if metric == "tokens_per_s" and not reliable_throughput(ok):
            better = None
        best = (rows["mean"].idxmin() if better == "min" else rows["mean"].idxmax() if better == "max" else None)
        cells = []
        for group in out.index:
            r = rows.loc[group]
            if pd.isna(r["mean"]):
                cells.append("–")
                continue
            cell = fmt.format(r["mean"])
            if r["n"] > 1:
                cell += f" [{fmt.format(r['low'])}, {fmt.format(r['high'])}]"
            cells.append(f"**{cell}**" if group == best and len(out) > 1 else cell)
        out[label] = cells
    if "maxvio_global" in ok and len(ok):
        order = ok.groupby("variant", sort=False)["maxvio_global"].mean().sort_values().index
        out = out.loc[order]
    return out


def paired_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per group and metric: the mean paired difference to the baseline over common seeds, its 95 %
    t-interval, '≈' when that interval contains 0, and the seeds that would resolve it."""
    ok = stats.with_groups(runs[runs["status"] == "ok"])
    summary = summary_metrics_spec()
    metrics = [m for m in summary if m in ok and ok[m].notna().any() and m != "tokens_per_s"]
    if not len(ok):
        return pd.DataFrame()
    table = stats.comparison(ok, metrics, baseline_label(ok))
    if "paired_diff" not in table:
        return pd.DataFrame()
    table = table.dropna(subset=["paired_diff"])
    rows = []
    for _, r in table.iterrows():
        fmt = summary[r["metric"]][2].replace(",", "")
        diff = f"{r['paired_diff']:+.3g}"
        if r["paired_n"] > 1:
            diff += f" [{r['paired_low']:+.3g}, {r['paired_high']:+.3g}]"
            if r["paired_low"] <= 0 <= r["paired_high"]:
                diff += " ≈"
        seeds = r["paired_seeds_needed"]
        rows.append({"variant": r["variant"], "baseline": r["baseline"], "metric": summary[r["metric"]][0],
                     "seeds": int(r["paired_n"]), "difference [95 % CI]": diff,
                     "seeds to resolve": "" if pd.isna(seeds) else ("> 1000" if math.isinf(seeds) else int(seeds)),
                     "_abs": abs(r["paired_diff"]), "_metric": r["metric"], "_fmt": fmt})
    return pd.DataFrame(rows)


def wide_paired(paired: pd.DataFrame) -> pd.DataFrame:
    """A row per variant, a column per metric, each cell "difference [interval] (seeds to resolve)";
    '≈' marks an interval that contains 0."""
    cells = [d + (f" ({n} seeds to resolve)" if str(n) and "≈" in d else "")
             for d, n in zip(paired["difference [95 % CI]"], paired["seeds to resolve"])]
    wide = paired.assign(cell=cells).pivot(index="variant", columns="metric", values="cell")
    wide = wide[[m for m in dict.fromkeys(paired["metric"]) if m in wide]]
    first = paired.drop_duplicates("variant").set_index("variant")
    wide.insert(0, "seeds", first["seeds"])
    wide.insert(0, "baseline", first["baseline"])
    return wide.loc[list(dict.fromkeys(paired["variant"]))].fillna("–")


def seeds_sentence(paired: pd.DataFrame) -> str:
    """How many seeds the smallest val-loss difference shown would need, from its paired spread."""
    loss = paired[(paired["_metric"] == "val_loss") & (paired["seeds"] > 1)] if len(paired) else paired
    if not len(loss):
        return ""
    smallest = loss.sort_values("_abs").iloc[0]
    return (f"The smallest val-loss difference shown ({smallest['variant']} against {smallest['baseline']}, "
            f"{smallest['_abs']:.4f}) would need {smallest['seeds to resolve']} seeds to resolve at 95 %, "
            f"from its observed paired spread; this suite has {smallest['seeds']}.")


def summary_note(runs: pd.DataFrame, table: pd.DataFrame) -> str:
    single_seed = int(table["runs"].max()) <= 1 if len(table) else True
    note = ("Mean over seeds [95 % interval; log-scale for MaxVio and speed, so never below zero]. Bold: the best "
            "mean. Groups are configs (config_id), named by label plus the keys that differ."
            + (" Only one seed per variant: noise unknown; run more seeds before trusting small gaps."
               if single_seed else ""))
    if not reliable_throughput(runs[runs["status"] == "ok"]):
        note += (" Some runs shared a contended CPU (throughput_reliable = false): tokens/s is not ranked; "
                 "'speed / dense' (against a dense model timed in the same process) is the fairer figure.")
    return note

COST_NOTE = ("What each load pattern would cost in expert-parallel training, per micro-batch in the second "
             "half of training: EP N efficiency = mean over busiest of N devices holding contiguous experts "
             "(1 = no device waits); drops at c = assignments a capacity-c system would drop. "
             "Specialisation: NMI of expert and domain on validation data; causal top-k loss: expert "
             "choice evaluated without seeing later tokens; k-loss Spearman: do harder tokens get more "
             "experts (variable-k routers).")


def add_tables(page: Page, runs: pd.DataFrame) -> None:
    """The summary, what imbalance costs, the runs that did not finish, and the paired comparison."""
    table = summary_table(runs, summary_spec(runs))
    page.table(table)
    page.text(summary_note(runs, table))
    costs = summary_table(runs, cost_metrics_spec(runs.columns))
    if len(costs.columns) > 1:
        page.section("What imbalance costs")
        page.table(costs)
        page.text(COST_NOTE)
    failed = runs[runs["status"] != "ok"]
    if len(failed):
        page.text("Runs that did not finish: " + "; ".join(f"{r.variant} (seed {r.seed}): {r.status}"
                                                           for r in failed.itertuples()))
    paired = paired_table(runs)
    if len(paired):
        shown = wide_paired(paired)
        page.section("Against the baseline")
        page.table(shown, shown.to_html(escape=True))
        page.text("Paired differences against the baseline over the seeds both share (the seed fixes "
                  "initialisation and data order), with a 95 % t-interval; '≈': the interval contains 0, so "
                  "the difference is inside the seed noise. " + seeds_sentence(paired))
