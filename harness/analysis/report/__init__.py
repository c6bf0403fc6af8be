"""A results folder's tables -> figures (`moe-harness plot`) and a report (`moe-harness report`).

    moe-harness plot results/smoke            # results/smoke/plots/*.png
    moe-harness report results/smoke          # results/smoke/report.html (+ report.md)

The HTML page embeds its images, so it can be mailed or attached as one file.
"""

from __future__ import annotations

import base64
import html
import io
import math
import contextlib
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harness import metric_registry, tables
from harness.analysis import plots, stats, transfer, verdicts

def spec_of(metrics) -> dict[str, tuple]:
    """metric -> (label, better, number format), from the metric registry."""
    return {m.name: (m.label, m.better, m.fmt) for m in metrics}


def summary_metrics_spec() -> dict[str, tuple]:
    return spec_of(metric_registry.summary_metrics())


def cost_metrics_spec(columns) -> dict[str, tuple]:
    """The second table's metrics, as the runs have them: what a load pattern would cost at each
    simulated EP size and capacity factor (metrics.py), plus the method-specific diagnostics."""
    return spec_of(metric_registry.cost_metrics(columns))


def read_tables(folder: Path) -> dict[str, pd.DataFrame]:
    folder = Path(folder)
    if not tables.has_results(folder):
        raise FileNotFoundError(2, "No results (run `moe-harness run SUITE.toml` or `moe-harness sweep` first)",
                                str(folder / "runs"))
    out = {name: tables.read(folder, name) for name in tables.TABLES}
    if (folder / "trials.parquet").is_file():
        out["trials"] = pd.read_parquet(folder / "trials.parquet")
    return out


THROUGHPUT_CAPTION = ("The speed cost of each method: training tokens/s over a dense model of equal active width "
                      "timed in the same process, which cancels most machine noise.")


def figures(data: dict[str, pd.DataFrame]) -> list[tuple[str, plt.Figure, str]]:
    """(file stem, figure, one-line caption saying what to look at), in report order."""
    runs = stats.with_groups(data["runs"]) if len(data["runs"]) else data["runs"]
    ok = runs[runs["status"].isin(["ok", "pruned"])]
    if "trials" in data:
        return sweep_figures(data["trials"], ok)
    if not len(ok):
        raise ValueError("no run in this folder finished (every run failed or diverged): nothing to plot; "
                         "see the status and error columns of `moe-harness export` for why")
    palette = plots.variant_palette(runs["variant"])
    steps = plots.with_variant(data["steps"], runs)
    out = [
        ("loss_vs_balance", plots.loss_vs_balance(ok, palette),
         "Lower-left wins: each variant's final loss against its global MaxVio; the dashed line joins the variants "
         "no other beats on both."),
        ("learning_curves", plots.learning_curves(steps, palette),
         "Whether balancing costs loss during training, not only at the end; bands span the seeds."),
        ("maxvio_batch", plots.maxvio_batch_curves(steps, palette),
         "How fast each method balances and whether it stays balanced (log scale; the control stays high)."),
        ("load_heatmaps", plots.load_heatmaps(plots.with_variant(data["loads"], runs)),
         "Where the imbalance sits: hot cells are experts taking more than their fair share in that layer."),
        ("throughput", plots.throughput(ok, palette, reliable=reliable_throughput(ok)), THROUGHPUT_CAPTION),
    ]
    varying_k = "k_hist" in ok and ok["k_hist"].dropna().apply(lambda h: sum(v > 0 for v in h) > 1).any()
    if varying_k:
        out.append(("experts_per_token", plots.experts_per_token(ok, palette),
                    "For dynamic k: how many experts tokens really use, and how many use none."))
    if "k_by_loss_decile" in ok and ok["k_by_loss_decile"].notna().any():
        out.append(("k_vs_loss", plots.k_against_loss(ok, palette),
                    "Do hard tokens get more experts? Mean experts per token in each decile of validation loss; "
                    "a rising line is Su's premise for dynamic k."))
    out += front_figure(ok, palette) + dynamics_figure(steps, ok, palette) + transfer_figure(ok, data["steps"])
    domain_loads = data["loads"][data["loads"]["scope"].astype(str).str.startswith("domain:")] \
        if len(data["loads"]) else data["loads"]
    if len(domain_loads):
        out.append(("specialisation", plots.specialisation_heatmaps(plots.with_variant(domain_loads, runs)),
                    "Do experts specialise by domain? How much more (red) or less (blue) a domain uses each expert "
                    "than the average domain does, for the domains that differ most; a pale panel: no specialisation."))
    return out


def transfer_figure(ok: pd.DataFrame, steps: pd.DataFrame) -> list[tuple[str, plt.Figure, str]]:
    """For a transfer study (rates x run lengths, transfer.py): the best rate per cell and the fitted law."""
    needed = {"router.bias_rate", "train.steps", "train.batch_size", "seed", "maxvio_global", "val_loss"}
    if not needed <= set(ok):
        return []
    rated = ok[ok["router.bias_rate"].fillna(0) > 0]
    if not len(rated) or rated["router.bias_mode"].nunique() != 1 or not transfer.is_study(rated):
        return []
    runs = transfer.study_runs(rated, steps)
    cells, fitted = [], []
    for objective in transfer.OBJECTIVES:
        found = transfer.best_rates(runs, objective, cap=0.3).assign(objective=objective)
        cells.append(found)
        with contextlib.suppress(ValueError):  # too few cells inside the grid: points, no line
            law = transfer.fit_law(found)
            for size in found["tokens_per_step"].unique():
                for steps in np.geomspace(found["steps"].min(), found["steps"].max(), 20):
                    fitted.append({"objective": objective, "tokens_per_step": size, "steps": steps,
                                   "rate": transfer.predict(law, int(round(steps)), int(size))[0]})
    fitted = pd.DataFrame(fitted, columns=["objective", "tokens_per_step", "steps", "rate"])
    return [("rate_transfer", plots.rate_transfer(pd.concat(cells, ignore_index=True), fitted),
             "The best bias rate against the run's length: lowest val loss with MaxVio_global <= 0.3 (left) and lowest "
             "time-averaged MaxVio_batch (right), per tokens-per-step; lines: the fitted law log u* = c + p log T + "
             "q log S; dotted: the square-root hypothesis's slope. `moe-harness rate` gives the numbers.")]


def dynamics_figure(steps: pd.DataFrame, ok: pd.DataFrame, palette: dict) -> list[tuple[str, plt.Figure, str]]:
    if "bias_spread" not in steps or not steps["bias_spread"].notna().any() or "settle_step" not in ok:
        return []
    out = [("controller_dynamics", plots.controller_dynamics(steps, ok, palette),
            "How each bias controller moved: when the imbalance settled (dotted), and how far its bias had to "
            "travel; a spread still growing at the end means the rate was too small for the run.")]
    if "controller_speed" in ok and ok.dropna(subset=["controller_speed"]).groupby(
            ["router.bias_mode", "controller_speed"]).ngroups >= 2:
        out.append(("controller_rates", plots.controller_rates(ok),
                     "Controllers against their own speed per step (u for a rate-driven rule, 1 - m for an EMA): "
                     "faster settles sooner but leaves more steady imbalance; compare where each curve sits."))
    return out


def front_figure(ok: pd.DataFrame, palette: dict) -> list[tuple[str, plt.Figure, str]]:
    _, distances = verdicts.verdicts(ok, stats.baseline_groups(ok, baseline_label(ok)))
    if not len(distances):
        return []
    return [("front", plots.front(ok, distances, palette),
             "Each method against the reference family's front at its own balance: a point under the grey line "
             "of its seed (same marker) beats the family at that MaxVio; points off the line's ends have no verdict.")]


def sweep_figures(trials: pd.DataFrame, runs: pd.DataFrame) -> list[tuple[str, plt.Figure, str]]:
    objectives = [c.removeprefix("objective_") for c in trials.columns if c.startswith("objective_")]
    params = [c for c in trials.columns if c.startswith(stats.CONFIG_PREFIXES)]
    numeric = [p for p in params if pd.api.types.is_numeric_dtype(trials[p])]
    categorical = [p for p in params if p not in numeric]
    constraint = sweep_constraint(trials)
    out = [("history", plots.sweep_history(trials, objectives[0], constraint),
            f"Convergence of the search: {objectives[0]} by trial, with the best so far"
            + (" among trials that meet the constraint." if constraint else "."))]
    _, flat = flat_optimum(runs, trials)
    inside = trials[trials["label"].isin(flat)] if len(flat) > 1 else trials.iloc[:0]
    for param in numeric:
        band = (inside[param].min(), inside[param].max()) if len(inside) else None
        out.append((f"objective_vs_{param.replace('.', '_')}",
                    plots.sweep_objective(trials, param, objectives[0], categorical[0] if categorical else None, band),
                    f"Where the best {param} lies; shaded: the flat optimum, the values whose trials are within "
                    "the paired seed noise of the best feasible trial."))
    pareto_y = objectives[1] if len(objectives) > 1 else "maxvio_global"
    if pareto_y in trials:
        out.append(("pareto", plots.sweep_pareto(trials, pareto_y, objectives[0], constraint),
                    f"The trade-off between {objectives[0]} and {pareto_y}: trials on the red line are not beaten on both."))
    return out


def sweep_constraint(trials: pd.DataFrame) -> tuple[str, float] | None:
    """(metric, max) of the sweep's constraint, as its trials stored it."""
    if "constraint_metric" not in trials or trials["constraint_metric"].dropna().empty:
        return None
    row = trials.dropna(subset=["constraint_metric"]).iloc[-1]
    return str(row["constraint_metric"]), float(row["constraint_max"])


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The best complete trial that meets the sweep's constraint, by its first objective."""
    objective = next((c for c in trials.columns if c.startswith("objective_")), None)
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[objective]) if objective else trials.iloc[:0]
    constraint = sweep_constraint(trials)
    if constraint and constraint[0] in done:
        done = done[done[constraint[0]] <= constraint[1]]
    if not len(done):
        return None
    better = getattr(metric_registry.get_metric(objective.removeprefix("objective_")), "better", None)
    return done.loc[done[objective].idxmax() if better == "max" else done[objective].idxmin()]


def flat_optimum(runs: pd.DataFrame, trials: pd.DataFrame) -> tuple[pd.Series | None, list[str]]:
    """(the best feasible trial, the labels of the trials within the paired noise of it): trials
    whose paired 95 % interval of the objective's difference to the best, over their common
    seeds, contains 0 (at least 2 common seeds), the best included."""
    best = best_trial(trials)
    metric = next((c.removeprefix("objective_") for c in trials.columns if c.startswith("objective_")), None)
    if best is None or metric not in runs:
        return best, []
    per_seed = runs[runs["status"] == "ok"].pivot_table(index="seed", columns="variant", values=metric)
    return best, stats.within_noise(per_seed, best["label"])


def flat_sentence(trials: pd.DataFrame, best: pd.Series | None, flat: list[str]) -> str:
    if best is None:
        return "No complete trial meets the constraint: no best trial to compare with."
    params = [c for c in trials.columns if c.startswith(stats.CONFIG_PREFIXES)
              and pd.api.types.is_numeric_dtype(trials[c])]
    inside = trials[trials["label"].isin(flat)]
    ranges = "; ".join(f"{p} from {inside[p].min():.3g} to {inside[p].max():.3g}" for p in params)
    return (f"Best feasible trial: {best['label']}; every comparison below is paired against it. Flat optimum: "
            f"{len(flat)} trial(s) whose paired difference to it contains 0 ({ranges or 'no numeric parameter'}); "
            "among those the data cannot choose, so prefer the middle of the range.")


def write_plots(folder: str | Path, fmt: str = "png") -> list[Path]:
    folder = Path(folder)
    data = read_tables(folder)
    (folder / "plots").mkdir(exist_ok=True)
    paths = []
    for name, fig, _ in figures(data):
        path = folder / "plots" / f"{name}.{fmt}"
        fig.savefig(path, dpi=150, format=fmt)
        plt.close(fig)
        paths.append(path)
    return paths


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


def markdown_table(table: pd.DataFrame) -> str:
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    rows = [[str(i)] + [str(v) for v in row] for i, row in zip(table.index, table.itertuples(index=False))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _html_table(table: pd.DataFrame) -> str:
    """The table as HTML, its markdown bold (**best**) as <b>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", table.to_html(escape=True))


def _png_base64(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=130, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


class Page:
    """A report written twice in step: Markdown (images in plots/) and self-contained HTML."""

    def __init__(self, folder: Path, title: str):
        self.folder, self.title = folder, title
        self.md = [f"# {title}", ""]
        self.html = [f"<h1>{html.escape(title)}</h1>"]

    def section(self, heading: str) -> None:
        self.md += [f"## {heading}", ""]
        self.html.append(f"<h2>{html.escape(heading)}</h2>")

    def text(self, markdown: str, plain: str | None = None, code: str | None = None) -> None:
        """A paragraph; `plain` is its HTML-escaped form where Markdown differs, `code` an inline code suffix."""
        self.md += [markdown, ""]
        body = html.escape(plain if plain is not None else markdown)
        self.html.append(f"<p>{body}{'' if code is None else f'<code>{html.escape(code)}</code>.'}</p>")

    def bullets(self, lines: list[str]) -> None:
        self.md += [f"- {line}" for line in lines] + [""]
        self.html.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")

    def table(self, frame: pd.DataFrame, as_html: str | None = None) -> None:
        self.md += [markdown_table(frame), ""]
        self.html.append(as_html if as_html is not None else _html_table(frame))

    def figure(self, stem: str, fig: plt.Figure, caption: str) -> None:
        fig.savefig(self.folder / "plots" / f"{stem}.png", dpi=150)
        self.md += [f"![{stem}](plots/{stem}.png)", "", f"*{caption}*", ""]
        self.html.append(f'<figure><img alt="{stem}" src="data:image/png;base64,{_png_base64(fig)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        plt.close(fig)

    def write(self) -> list[Path]:
        style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
                 "td,th{padding:3px 8px;border-bottom:1px solid #ddd}img{max-width:100%}")
        page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title.split(':')[0])}" \
               f"</title><style>{style}</style></head><body>{''.join(self.html)}</body></html>"
        tables.write_text_atomic(self.folder / "report.html", page)
        tables.write_text_atomic(self.folder / "report.md", "\n".join(self.md))
        return [self.folder / "report.html", self.folder / "report.md"]


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
    """The verdicts first (where the suite asks for them), then the summary, what imbalance costs,
    the runs that did not finish, and the paired comparison."""
    if add_verdicts(page, runs):
        page.section("Means over seeds")
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


def write_report(folder: str | Path) -> list[Path]:
    """report.html (self-contained) and report.md (images in plots/) for a suite or sweep folder."""
    folder = Path(folder)
    data = read_tables(folder)
    runs = data["runs"]
    name = str(runs["suite"].iloc[0]) if "suite" in runs else folder.name
    page = Page(folder, f"{name}: MoE load-balancing report")
    page.text(f"{len(runs)} runs, from `{folder}`.", f"{len(runs)} runs, from ", str(folder))
    if "trials" in data:  # NOTE: a sweep compares every trial with its best feasible one, not the first
        best, flat = flat_optimum(runs, data["trials"])
        runs = runs.assign(baseline=best["label"]) if best is not None else runs
        page.text(flat_sentence(data["trials"], best, flat))
    add_tables(page, runs)
    (folder / "plots").mkdir(exist_ok=True)
    for stem, fig, caption in figures(data):
        page.figure(stem, fig, caption)
    return page.write()
