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
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from harness import plots, tables

SUMMARY_METRICS = {  # metric -> (label, better, number format)
    "val_loss": ("val loss", "min", "{:.3f}"),
    "maxvio_global": ("MaxVio global", "min", "{:.3f}"),
    "maxvio_batch": ("MaxVio batch", "min", "{:.3f}"),
    "mean_k": ("experts/token", None, "{:.2f}"),
    "tokens_per_s": ("tokens/s", "max", "{:,.0f}"),
}
# two-sided 95 % Student t quantiles by degrees of freedom (n - 1)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}


def t_quantile(dof: int) -> float:
    return T975.get(dof) or next((v for k, v in sorted(T975.items()) if k >= dof), 1.96)


def read_tables(folder: Path) -> dict[str, pd.DataFrame]:
    folder = Path(folder)
    if not tables.has_results(folder):
        raise FileNotFoundError(2, "No results (run `moe-harness run SUITE.toml` or `moe-harness sweep` first)",
                                str(folder / "runs"))
    out = {name: tables.read(folder, name) for name in tables.TABLES}
    if (folder / "trials.parquet").is_file():
        out["trials"] = pd.read_parquet(folder / "trials.parquet")
    return out


def figures(data: dict[str, pd.DataFrame]) -> list[tuple[str, plt.Figure, str]]:
    """(file stem, figure, one-line caption saying what to look at), in report order."""
    runs = data["runs"]
    ok = runs[runs["status"].isin(["ok", "pruned"])]
    if "trials" in data:
        return sweep_figures(data["trials"], ok)
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
        ("throughput", plots.throughput(ok, palette),
         "The speed cost of each method, training steps only."),
    ]
    varying_k = "k_hist" in ok and ok["k_hist"].dropna().apply(lambda h: sum(v > 0 for v in h) > 1).any()
    if varying_k:
        out.append(("experts_per_token", plots.experts_per_token(ok, palette),
                    "For dynamic k: how many experts tokens really use, and how many use none."))
    return out


def sweep_figures(trials: pd.DataFrame, runs: pd.DataFrame) -> list[tuple[str, plt.Figure, str]]:
    objectives = [c.removeprefix("objective_") for c in trials.columns if c.startswith("objective_")]
    params = [c for c in trials.columns if "." in c and not c.startswith(("user_attrs", "system_attrs"))]
    numeric = [p for p in params if pd.api.types.is_numeric_dtype(trials[p])]
    categorical = [p for p in params if p not in numeric]
    out = [("history", plots.sweep_history(trials, objectives[0]),
            f"Convergence of the search: {objectives[0]} by trial, with the best so far.")]
    for param in numeric:
        out.append((f"objective_vs_{param.replace('.', '_')}",
                    plots.sweep_objective(trials, param, objectives[0], categorical[0] if categorical else None),
                    f"Where the best {param} lies, and how flat the optimum is."))
    pareto_y = objectives[1] if len(objectives) > 1 else "maxvio_global"
    if pareto_y in trials:
        out.append(("pareto", plots.sweep_pareto(trials, pareto_y, objectives[0]),
                    f"The trade-off between {objectives[0]} and {pareto_y}: trials on the red line are not beaten on both."))
    return out


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


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per variant and metric: mean ± sd [95 % CI]; '≈' marks a mean whose interval overlaps the best's."""
    ok = runs[runs["status"] == "ok"]
    metrics = [m for m in SUMMARY_METRICS if m in ok]
    stats = ok.groupby("variant")[metrics].agg(["mean", "std", "count"])
    table = pd.DataFrame(index=stats.index)
    table["runs"] = stats[(metrics[0], "count")].astype(int)
    for metric in metrics:
        mean, std, n = stats[(metric, "mean")], stats[(metric, "std")].fillna(0.0), stats[(metric, "count")]
        half = pd.Series([t_quantile(int(c) - 1) * s / math.sqrt(c) if c > 1 else math.nan for s, c in zip(std, n)],
                         index=stats.index)
        label, better, fmt = SUMMARY_METRICS[metric]
        best = mean.idxmin() if better == "min" else mean.idxmax() if better == "max" else None
        cells = []
        for variant in stats.index:
            cell = fmt.format(mean[variant])
            if n[variant] > 1:
                low, high = fmt.format(mean[variant] - half[variant]), fmt.format(mean[variant] + half[variant])
                cell += f" ± {fmt.format(std[variant])} [{low}, {high}]"
            if best is not None and variant != best and n[variant] > 1 and n[best] > 1 and \
                    abs(mean[variant] - mean[best]) <= half[variant] + half[best]:
                cell += " ≈"
            elif variant == best:
                cell = f"**{cell}**"
            cells.append(cell)
        table[label] = cells
    order = stats[("maxvio_global", "mean")].sort_values().index if "maxvio_global" in metrics else stats.index
    return table.loc[order]


def markdown_table(table: pd.DataFrame) -> str:
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    rows = [[str(i)] + [str(v) for v in row] for i, row in zip(table.index, table.itertuples(index=False))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _png_base64(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=130, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def write_report(folder: str | Path) -> list[Path]:
    """report.html (self-contained) and report.md (images in plots/) for a suite or sweep folder."""
    folder = Path(folder)
    data = read_tables(folder)
    runs = data["runs"]
    name = str(runs["suite"].iloc[0]) if "suite" in runs else folder.name
    table = summary_table(runs)
    single_seed = int(table["runs"].max()) <= 1 if len(table) else True
    note = ("Bold: the best mean. '≈': the 95 % interval overlaps the best's, so the difference is inside the "
            "seed noise. " + ("Only one seed per variant: noise unknown; run more seeds before trusting small gaps."
                              if single_seed else ""))
    failed = runs[runs["status"] != "ok"]
    failed_lines = [f"{r.variant} (seed {r.seed}): {r.status}" for r in failed.itertuples()]
    md = [f"# {name}: MoE load-balancing report", "", f"{len(runs)} runs, from `{folder}`.", "",
          markdown_table(table), "", note, ""]
    html_parts = [f"<h1>{html.escape(name)}: MoE load-balancing report</h1>",
                  f"<p>{len(runs)} runs, from <code>{html.escape(str(folder))}</code>.</p>",
                  re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", table.to_html(escape=True)), f"<p>{html.escape(note)}</p>"]
    if failed_lines:
        md += ["Runs that did not finish: " + "; ".join(failed_lines), ""]
        html_parts.append("<p>Runs that did not finish: " + html.escape("; ".join(failed_lines)) + "</p>")
    (folder / "plots").mkdir(exist_ok=True)
    for stem, fig, caption in figures(data):
        fig.savefig(folder / "plots" / f"{stem}.png", dpi=150)
        md += [f"![{stem}](plots/{stem}.png)", "", f"*{caption}*", ""]
        html_parts.append(f'<figure><img alt="{stem}" src="data:image/png;base64,{_png_base64(fig)}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        plt.close(fig)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{padding:3px 8px;border-bottom:1px solid #ddd}img{max-width:100%}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title>" \
           f"<style>{style}</style></head><body>{''.join(html_parts)}</body></html>"
    tables.write_text_atomic(folder / "report.html", page)
    tables.write_text_atomic(folder / "report.md", "\n".join(md))
    return [folder / "report.html", folder / "report.md"]
