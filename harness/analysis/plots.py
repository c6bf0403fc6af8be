"""Comparison figures: pure functions, long-form DataFrame in, matplotlib Figure out.

No function reads a file or touches global state; `report.py` reads the tables and saves the
figures. Pass the same `palette` (see `variant_palette`) to every figure of one report so a
variant has one colour throughout.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # NOTE: headless; a report is written on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from harness.analysis.front import family_points, pareto_mask  # noqa: E402
from harness.analysis.verdicts import family_labels  # noqa: E402
from harness.metric_registry import get_metric  # noqa: E402

sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)


def variant_palette(variants) -> dict[str, tuple]:
    """One colour per variant, stable for a given set of names (sorted)."""
    names = sorted(set(variants))
    colours = sns.color_palette("colorblind" if len(names) <= 10 else "husl", len(names))
    return dict(zip(names, colours))


def _figure(width: float = 7.0, height: float = 4.2) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    return fig, ax


def _legend_outside(ax: plt.Axes, title: str = "variant") -> None:
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), title=title, frameon=False)


def with_variant(steps: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """steps (or loads) rows with each run's variant and seed attached."""
    return steps.merge(runs[["run_id", "variant", "seed"]], on="run_id", how="inner")


def learning_curves(steps: pd.DataFrame, palette: dict | None = None) -> Figure:
    """Validation loss against training tokens: mean over seeds, band = min..max over seeds."""
    data = steps.dropna(subset=["val_loss"])
    fig, ax = _figure()
    sns.lineplot(data=data, x="tokens", y="val_loss", hue="variant", palette=palette or variant_palette(data["variant"]),
                 errorbar=("pi", 100), marker="o", ax=ax)
    ax.set(xlabel="training tokens", ylabel="validation loss (nats/token)", title="Learning curves")
    _legend_outside(ax)
    return fig


def maxvio_batch_curves(steps: pd.DataFrame, palette: dict | None = None) -> Figure:
    """Per-step MaxVio_batch (layer mean) on a log axis."""
    data = steps.dropna(subset=["maxvio_batch"])
    fig, ax = _figure()
    sns.lineplot(data=data, x="step", y="maxvio_batch", hue="variant", palette=palette or variant_palette(data["variant"]),
                 errorbar=("pi", 100), ax=ax)
    ax.set_yscale("log")
    ax.set(xlabel="optimizer step", ylabel="MaxVio_batch (layer mean, log scale)", title="Load imbalance during training")
    _legend_outside(ax)
    return fig


def controller_dynamics(steps: pd.DataFrame, runs: pd.DataFrame, palette: dict | None = None) -> Figure:
    """For runs with a bias controller: MaxVio_batch per step (log) with each variant's mean settle
    step as a dotted line, and the bias's spread (max - min, layer mean) per step."""
    data = steps.dropna(subset=["bias_spread"])
    variants = data["variant"].unique()
    data = steps[steps["variant"].isin(variants)].dropna(subset=["maxvio_batch"])
    palette = palette or variant_palette(variants)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    sns.lineplot(data=data, x="step", y="maxvio_batch", hue="variant", palette=palette, errorbar=("pi", 100),
                 ax=left, legend=False)
    settle = runs[runs["variant"].isin(variants)].groupby("variant")["settle_step"].mean()
    for variant, step in settle.dropna().items():
        left.axvline(step, color=palette[variant], linestyle=":", linewidth=1.5)
    left.set_yscale("log")
    left.set(xlabel="optimizer step", ylabel="MaxVio_batch (layer mean, log)", title="Imbalance; dotted: settle step")
    sns.lineplot(data=steps.dropna(subset=["bias_spread"]), x="step", y="bias_spread", hue="variant",
                 palette=palette, errorbar=("pi", 100), ax=right)
    right.set(xlabel="optimizer step", ylabel="bias spread, max - min (layer mean)", title="The bias's trajectory")
    _legend_outside(right)
    return fig


def controller_rates(runs: pd.DataFrame) -> Figure:
    """Controllers side by side against their own speed (`controller_speed`, log): the settle
    fraction (settle step over the run's steps) and the steady imbalance (MaxVio_batch over the
    second half); runs as dots, the seed mean per speed as a line, one colour per controller."""
    data = runs.dropna(subset=["controller_speed", "settle_step"]).copy()
    data["controller"] = data["router.bias_mode"].astype(str) + " (" + data["controller_speed_of"].astype(str) + ")"
    data["settle_fraction"] = data["settle_step"] / data["train.steps"]
    palette = variant_palette(data["controller"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for ax, y, label in ((axes[0], "settle_fraction", "settle step / run steps"),
                         (axes[1], "maxvio_batch", "steady MaxVio_batch (second half)")):
        sns.scatterplot(data=data, x="controller_speed", y=y, hue="controller", palette=palette, alpha=0.4,
                        legend=False, ax=ax)
        means = data.groupby(["controller", "controller_speed"], as_index=False)[y].mean()
        sns.lineplot(data=means, x="controller_speed", y=y, hue="controller", palette=palette, marker="o",
                     legend=ax is axes[1], ax=ax)
        ax.set_xscale("log")
        ax.set(xlabel="controller speed per step (its own units, log)", ylabel=label)
    axes[0].set(title="How soon it settles")
    axes[1].set(title="How much imbalance it leaves")
    _legend_outside(axes[1])
    return fig


def rate_transfer(cells: pd.DataFrame, fitted: pd.DataFrame) -> Figure:
    """The best bias rate of each (steps, tokens per step) cell against the run's length (log-log),
    one panel per objective (`cells["objective"]`), one colour per tokens per step; hollow markers:
    a best rate at the edge of the rate grid (only a bound, left out of the fit); lines: the fitted
    law (`fitted`: objective, tokens_per_step, steps, rate) and, dotted, a slope of -1/2 through its
    middle for the square-root hypothesis."""
    objectives = list(dict.fromkeys(cells["objective"]))
    fig, axes = plt.subplots(1, len(objectives), figsize=(5.6 * len(objectives) + 1.6, 4.2), layout="constrained",
                             squeeze=False)
    sizes = sorted(cells["tokens_per_step"].unique())
    colours = dict(zip(sizes, sns.color_palette("colorblind", len(sizes))))
    for ax, objective in zip(axes[0], objectives):
        mine = cells[cells["objective"] == objective]
        for size, part in mine.groupby("tokens_per_step"):
            inside, edge = part[~part["at_edge"]], part[part["at_edge"]]
            ax.plot(inside["steps"], inside["rate"], "o", color=colours[size], label=f"{size} tokens/step")
            ax.plot(edge["steps"], edge["rate"], "o", mfc="none", color=colours[size])
            line = fitted[(fitted["objective"] == objective) & (fitted["tokens_per_step"] == size)]
            ax.plot(line["steps"], line["rate"], "-", color=colours[size], lw=1)
        line = fitted[fitted["objective"] == objective]
        if len(line):
            mid_steps = math.exp(np.log(line["steps"]).mean())
            mid_rate = math.exp(np.log(line["rate"]).mean())
            xs = np.array([line["steps"].min(), line["steps"].max()])
            ax.plot(xs, mid_rate * (xs / mid_steps) ** -0.5, ":", color="0.4", label="slope -1/2")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(xlabel="run length, optimizer steps (log)", ylabel="best bias rate u (log)", title=objective)
    axes[0][-1].plot([], [], "o", mfc="none", color="0.4", label="at the grid's edge")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def loss_vs_balance(runs: pd.DataFrame, palette: dict | None = None) -> Figure:
    """Final validation loss against MaxVio_global: runs as dots, variant means with sd bars,
    and the Pareto front of the means (lower-left is better)."""
    data = runs.dropna(subset=["val_loss", "maxvio_global"])
    palette = palette or variant_palette(data["variant"])
    fig, ax = _figure()
    sns.scatterplot(data=data, x="maxvio_global", y="val_loss", hue="variant", palette=palette, alpha=0.35,
                    legend=False, ax=ax)
    means = data.groupby("variant")[["maxvio_global", "val_loss"]].agg(["mean", "std"]).fillna(0.0)
    for variant, row in means.iterrows():
        ax.errorbar(row[("maxvio_global", "mean")], row[("val_loss", "mean")], xerr=row[("maxvio_global", "std")],
                    yerr=row[("val_loss", "std")], fmt="o", ms=8, capsize=3, color=palette[variant], label=variant)
    front = means[pareto_mask(means[("maxvio_global", "mean")], means[("val_loss", "mean")])]
    front = front.sort_values(("maxvio_global", "mean"))
    ax.plot(front[("maxvio_global", "mean")], front[("val_loss", "mean")], "k--", lw=1, marker="o", ms=16,
            mfc="none", label="Pareto front")  # rings, so a one-variant front still shows
    ax.set(xlabel="MaxVio_global (0 = balanced)", ylabel="final validation loss (nats/token)",
           title="Loss against load balance")
    # NOTE: a point per variant in the legend, not errorbar handles (they read as lines)
    handles = [Line2D([], [], marker="o", linestyle="", color=palette[v], label=v) for v in means.index]
    handles.append(Line2D([], [], color="k", linestyle="--", marker="o", ms=10, mfc="none", label="Pareto front"))
    ax.legend(handles=handles)
    _legend_outside(ax)
    return fig


def _panel_heatmaps(grids: dict[str, pd.DataFrame], panel: tuple[float, float], xlabel: str, ylabel: str,
                    cbar_label: str, title: str) -> Figure:
    """One heatmap per variant (up to 3 a row) of values where 1 is neutral, on one colour scale:
    white = 1, red above, blue below."""
    cols = min(3, max(1, len(grids)))
    rows = max(1, -(-len(grids) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(panel[0] * cols, panel[1] * rows + 0.6), layout="constrained",
                             squeeze=False)
    vmax = max([2.0] + [float(np.nanmax(g.to_numpy())) for g in grids.values() if g.size])
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=vmax)
    for ax, (variant, grid) in zip(axes.flat, grids.items()):
        sns.heatmap(grid, ax=ax, cmap="RdBu_r", norm=norm, cbar_kws={"label": cbar_label})
        ax.set(title=variant, xlabel=xlabel, ylabel=ylabel)
    for ax in list(axes.flat)[len(grids):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def load_heatmaps(loads: pd.DataFrame, scope: str = "global") -> Figure:
    """Layer x expert load (fraction x n: 1 = fair share) at the last evaluation, a panel per variant."""
    data = loads[loads["scope"] == scope]
    data = data[data["step"] == data.groupby("run_id")["step"].transform("max")]
    data = data[data["seed"] == data.groupby("variant")["seed"].transform("min")]  # one seed per variant
    data = data.assign(share=data["load"] * data.groupby("run_id")["expert"].transform("nunique"))  # 1 = fair share
    grids = {variant: data[data["variant"] == variant].pivot_table(index="layer", columns="expert", values="share")
             for variant in sorted(data["variant"].unique())}
    return _panel_heatmaps(grids, (4.2, 2.6), "expert", "layer", "load / fair share",
                           f"Expert load at the final evaluation ({scope} scope)")


def experts_per_token(runs: pd.DataFrame, palette: dict | None = None) -> Figure:
    """Distribution of experts used per token (and layer), for variants whose k varies."""
    rows = []
    for _, run in runs.dropna(subset=["k_hist"]).iterrows():
        rows += [{"variant": run["variant"], "experts": k, "fraction": f} for k, f in enumerate(run["k_hist"])]
    data = pd.DataFrame(rows, columns=["variant", "experts", "fraction"])
    varying = data[(data["fraction"] > 0)].groupby("variant")["experts"].nunique()
    data = data[data["variant"].isin(varying[varying > 1].index)]
    fig, ax = _figure()
    if len(data):
        data = data[data["experts"] <= data.loc[data["fraction"] > 0, "experts"].max()]
        sns.barplot(data=data, x="experts", y="fraction", hue="variant", palette=palette or variant_palette(data["variant"]),
                    errorbar="sd", ax=ax)
    else:
        ax.text(0.5, 0.5, "no variant with a varying number of experts", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="experts used by a token in a layer", ylabel="fraction of tokens", title="Experts per token (dynamic k)")
    _legend_outside(ax)
    return fig


def k_against_loss(runs: pd.DataFrame, palette: dict | None = None) -> Figure:
    """Mean experts per token by decile of validation loss (`k_by_loss_decile`), a line per variant
    (band: seeds), for routers whose k varies."""
    rows = []
    for _, run in runs.dropna(subset=["k_by_loss_decile"]).iterrows():
        rows += [{"variant": run["variant"], "decile": d + 1, "k": k} for d, k in enumerate(run["k_by_loss_decile"])]
    data = pd.DataFrame(rows, columns=["variant", "decile", "k"])
    fig, ax = _figure()
    sns.lineplot(data=data, x="decile", y="k", hue="variant", marker="o", errorbar=("pi", 100),
                 palette=palette or variant_palette(data["variant"]), ax=ax)
    ax.set(xlabel="validation-loss decile (1 = easiest tokens)", ylabel="mean experts per token",
           title="Experts per token against difficulty", xticks=range(1, 11))
    _legend_outside(ax)
    return fig


def specialisation_heatmaps(loads: pd.DataFrame, top_domains: int = 12) -> Figure:
    """Expert x domain lift: the share of a domain's assignments an expert takes over that expert's
    share in the average domain (1 = no preference), layer mean, first seed, a panel per variant;
    the `top_domains` domains whose lift varies most. Dividing by the expert's own share removes
    plain imbalance (an expert hot for every domain), leaving specialisation.
    Input: loads rows of scope `domain:<name>` (the final evaluation), with variant and seed."""
    data = loads[loads["seed"] == loads.groupby("variant")["seed"].transform("min")].copy()
    data["domain"] = data["scope"].str.removeprefix("domain:")
    overall = data.groupby(["run_id", "layer", "expert"])["load"].transform("mean")
    data["lift"] = data["load"] / overall.where(overall > 0)
    lift = data.groupby(["variant", "domain", "expert"], as_index=False)["lift"].mean()
    spread = lift.groupby(["variant", "domain"])["lift"].std().groupby("domain").mean()
    lift = lift[lift["domain"].isin(spread.sort_values(ascending=False).index[:top_domains])]
    grids = {variant: lift[lift["variant"] == variant].pivot_table(index="domain", columns="expert", values="lift")
             for variant in sorted(lift["variant"].unique())}
    return _panel_heatmaps(grids, (4.6, 3.4), "expert", "", "lift over the expert's mean share",
                           "Expert specialisation by domain (layer mean, final evaluation)")


def throughput(runs: pd.DataFrame, palette: dict | None = None, reliable: bool = True) -> Figure:
    """Training speed per variant as a fraction of a dense model of equal active width timed in the
    same process (`throughput_ratio`; bare tokens/s for runs without it); bars = mean, lines = sd."""
    metric = "throughput_ratio" if "throughput_ratio" in runs and runs["throughput_ratio"].notna().any() \
        else "tokens_per_s"
    data = runs.dropna(subset=[metric])
    order = data.groupby("variant")[metric].mean().sort_values(ascending=False).index
    fig, ax = _figure(7.0, 0.45 * len(order) + 1.5)
    sns.barplot(data=data, y="variant", x=metric, hue="variant", order=order, errorbar="sd",
                palette=palette or variant_palette(data["variant"]), legend=False, ax=ax)
    xlabel = "training speed / dense FFN of equal active width" if metric == "throughput_ratio" else \
        "training throughput (tokens/s)"
    title = "Throughput" if reliable else "Throughput (contended machine: some runs flagged unreliable)"
    ax.set(xlabel=xlabel, ylabel="", title=title)
    return fig


def sweep_objective(trials: pd.DataFrame, param: str, objective: str, hue: str | None = None,
                    band: tuple[float, float] | None = None) -> Figure:
    """Each complete trial's objective against one swept parameter (log axis if positive), with the
    flat optimum's range of the parameter shaded (`band`: the trials within the noise of the best)."""
    data = trials[trials["state"] == "COMPLETE"].dropna(subset=[objective])
    fig, ax = _figure()
    if band is not None:
        ax.axvspan(*band, color="C2", alpha=0.15, label="flat optimum")
    sns.scatterplot(data=data, x=param, y=objective, hue=hue if hue in data else None, s=60, ax=ax)
    if len(data) and pd.api.types.is_numeric_dtype(data[param]) and (data[param] > 0).all():
        ax.set_xscale("log")
    ax.set(xlabel=param, ylabel=objective, title=f"{objective} against {param}")
    _legend_outside(ax, title=hue or "")
    return fig


def sweep_pareto(trials: pd.DataFrame, x: str, y: str, constraint: tuple[str, float] | None = None) -> Figure:
    """Two objectives of every complete trial, with the non-dominated trials joined and the
    constraint, if one is on an axis, drawn as a dashed line."""
    data = trials[trials["state"] == "COMPLETE"].dropna(subset=[x, y])
    fig, ax = _figure()
    ax.scatter(data[x], data[y], color="0.6", label="trial")
    front = data[pareto_mask(data[x], data[y])].sort_values(x) if len(data) else data
    ax.plot(front[x], front[y], "o-", color="C3", label="Pareto front")
    if constraint and constraint[0] in (x, y):
        line = ax.axvline if constraint[0] == x else ax.axhline
        line(constraint[1], color="k", ls="--", lw=1, label=f"constraint {constraint[0]} <= {constraint[1]:g}")
    ax.set(xlabel=x, ylabel=y, title="Pareto front of the study")
    ax.legend()
    return fig


def sweep_history(trials: pd.DataFrame, objective: str, constraint: tuple[str, float] | None = None) -> Figure:
    """Objective by trial number, with the best value so far among trials that meet the constraint
    (infeasible trials drawn hollow); integer ticks."""
    from matplotlib.ticker import MaxNLocator

    data = trials[trials["state"] == "COMPLETE"].dropna(subset=[objective]).sort_values("trial")
    feasible = data[constraint[0]] <= constraint[1] if constraint and constraint[0] in data else \
        pd.Series(True, index=data.index)
    fig, ax = _figure()
    ax.scatter(data.loc[feasible, "trial"], data.loc[feasible, objective], color="0.4", label="trial")
    if (~feasible).any():
        ax.scatter(data.loc[~feasible, "trial"], data.loc[~feasible, objective], facecolors="none",
                   edgecolors="0.6", label=f"fails {constraint[0]} <= {constraint[1]:g}")
    better = getattr(get_metric(objective.removeprefix("objective_")), "better", None) or "min"
    running = data[objective].where(feasible)
    # NOTE: carried over infeasible trials, so the line does not break where one sits
    best = (running.cummax() if better == "max" else running.cummin()).ffill()
    ax.step(data["trial"], best, where="post", color="C0", label="best so far" + (" (feasible)" if constraint else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel=objective, title="Optimisation history")
    ax.legend()
    return fig


SEED_MARKERS = "osD^vP*Xph"  # a seed's front line and its methods' points share one


def front(runs: pd.DataFrame, distances: pd.DataFrame, palette: dict | None = None) -> Figure:
    """Each reference family's Pareto front per seed (val loss against MaxVio_global, log x): its
    non-dominated members joined by a grey line, monotone by construction, its dominated members
    hollow; every other run a point in its variant's colour, marked like its seed's front. One
    panel per family (`distances["family"]`, verdicts.verdicts)."""
    names = list(distances["family"].unique()) if "family" in distances else ["front"]
    entries = 2 + distances["variant"].nunique() + distances["seed"].nunique() if len(distances) else 2
    fig, axes = plt.subplots(1, len(names), figsize=(6.4 * len(names) + 2.2, max(4.4, 0.25 * entries)),
                             layout="constrained", sharey=True, squeeze=False)
    labels = family_labels(runs)
    for ax, name in zip(axes[0], names):
        mine = labels == name
        part = distances[distances["family"] == name] if "family" in distances else distances
        palette = palette or variant_palette(part["variant"].unique())
        _front_panel(ax, family_points(runs[mine].dropna(subset=["maxvio_global", "val_loss"])),
                     part.dropna(subset=["maxvio_global", "val_loss"]), palette)
        ax.set(xlabel="MaxVio global (log)", ylabel="val loss", title=name if len(names) > 1 else None)
    handles = [Line2D([], [], color="0.5", marker="o", label="front (a line per seed)"),
               Line2D([], [], color="0.5", marker="o", mfc="none", linestyle="", label="dominated member")]
    shown = list(dict.fromkeys(distances["variant"])) if len(distances) else []
    handles += [Line2D([], [], color=palette[v], marker="o", linestyle="", label=v) for v in shown if v in palette]
    seeds = sorted(distances["seed"].unique()) if len(distances) else []
    handles += [Line2D([], [], color="0.3", marker=SEED_MARKERS[i % len(SEED_MARKERS)], linestyle="",
                       label=f"seed {s}") for i, s in enumerate(seeds)]
    axes[0][-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def _front_panel(ax: plt.Axes, family: pd.DataFrame, others: pd.DataFrame, palette: dict) -> None:
    seeds = sorted(set(family["seed"]) | set(others["seed"]))
    marker = {s: SEED_MARKERS[i % len(SEED_MARKERS)] for i, s in enumerate(seeds)}
    for seed, points in family.groupby("seed"):
        line = points[points["on_front"]].sort_values("maxvio_global")
        ax.plot(line["maxvio_global"], line["val_loss"], color="0.55", lw=1, marker=marker[seed], ms=5)
        off = points[~points["on_front"]]
        ax.plot(off["maxvio_global"], off["val_loss"], linestyle="", marker=marker[seed], ms=6, mfc="none",
                color="0.55")
    for (variant, seed), point in others.groupby(["variant", "seed"]):
        ax.plot(point["maxvio_global"], point["val_loss"], linestyle="", marker=marker[seed], ms=8,
                color=palette.get(variant, "k"))
    values = pd.concat([family["maxvio_global"], others["maxvio_global"]])
    values = values[values > 0]
    ax.set_xscale("log")
    # NOTE: ticks at 1, 2 and 5 of each decade, labelled plainly: a short range has no decade inside it
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if len(values):
        ax.set_xlim(values.min() / 1.3, values.max() * 1.3)
