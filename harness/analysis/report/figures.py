"""The report's figures, one at a time (each is saved and closed before the next is drawn, so a
large suite never holds them all): loss against balance, learning curves, MaxVio per step, load
heatmaps, throughput, and where the runs have them, experts per token, the front, controller
dynamics, the rate-transfer law and specialisation. Each comes with a one-line caption."""

from __future__ import annotations

import contextlib
from typing import Iterator

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harness.analysis import plots, stats, transfer, verdicts
from harness.metric_registry import BALANCED_MAXVIO
from harness.analysis.report.sweep import sweep_figures
from harness.analysis.report.summary import reliable_throughput

Figure = tuple[str, plt.Figure, str]  # (file stem, figure, one-line caption)


THROUGHPUT_CAPTION = ("The speed cost of each method: training tokens/s over a dense model of equal active width "
                      "timed in the same process, which cancels most machine noise.")


def draw_figures(data: dict[str, pd.DataFrame]) -> Iterator[Figure]:
    """(file stem, figure, one-line caption saying what to look at), in report order, drawn one at
    a time: the caller saves and closes each before asking for the next."""
    runs = stats.with_groups(data["runs"]) if len(data["runs"]) else data["runs"]
    ok = runs[runs["status"].isin(["ok", "pruned"])]
    if "trials" in data:
        yield from sweep_figures(data["trials"], ok)
        return
    if not len(ok):
        raise ValueError("no run in this folder finished (every run failed or diverged): nothing to plot; "
                         "see the status and error columns of `moe-harness export` for why")
    palette = plots.variant_palette(runs["variant"])
    steps = plots.with_variant(data["steps"], runs)
    yield ("loss_vs_balance", plots.loss_vs_balance(ok, palette),
           "Lower-left wins: each variant's final loss against its global MaxVio; the dashed line joins the variants "
           "no other beats on both.")
    yield ("learning_curves", plots.learning_curves(steps, palette),
           "Whether balancing costs loss during training, not only at the end; bands span the seeds.")
    yield ("maxvio_batch", plots.maxvio_batch_curves(steps, palette),
           "How fast each method balances and whether it stays balanced (log scale; the control stays high).")
    yield ("load_heatmaps", plots.load_heatmaps(plots.with_variant(data["loads"], runs)),
           "Where the imbalance sits: hot cells are experts taking more than their fair share in that layer.")
    yield "throughput", plots.throughput(ok, palette, reliable=reliable_throughput(ok)), THROUGHPUT_CAPTION
    yield from variable_k_figures(ok, palette)
    yield from front_figure(ok, palette)
    yield from dynamics_figure(steps, ok, palette)
    yield from transfer_figure(ok, data["steps"])
    domain_loads = data["loads"][data["loads"]["scope"].astype(str).str.startswith("domain:")] \
        if len(data["loads"]) else data["loads"]
    if len(domain_loads):
        yield ("specialisation", plots.specialisation_heatmaps(plots.with_variant(domain_loads, runs)),
               "Do experts specialise by domain? How much more (red) or less (blue) a domain uses each expert "
               "than the average domain does, for the domains that differ most; a pale panel: no specialisation.")


def variable_k_figures(ok: pd.DataFrame, palette: dict) -> Iterator[Figure]:
    """For routers whose k varies: experts per token, and experts per token against difficulty."""
    if "k_hist" in ok and ok["k_hist"].dropna().apply(lambda h: sum(v > 0 for v in h) > 1).any():
        yield ("experts_per_token", plots.experts_per_token(ok, palette),
               "For dynamic k: how many experts tokens really use, and how many use none.")
    if "k_by_loss_decile" in ok and ok["k_by_loss_decile"].notna().any():
        yield ("k_vs_loss", plots.k_against_loss(ok, palette),
               "Do hard tokens get more experts? Mean experts per token in each decile of validation loss; "
               "a rising line is Su's premise for dynamic k.")


def transfer_figure(ok: pd.DataFrame, steps: pd.DataFrame) -> list[Figure]:
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
        found = transfer.best_rates(runs, objective, cap=BALANCED_MAXVIO).assign(objective=objective)
        cells.append(found)
        with contextlib.suppress(ValueError):  # too few cells inside the grid: points, no line
            law = transfer.fit_law(found)
            for size in found["tokens_per_step"].unique():
                for steps in np.geomspace(found["steps"].min(), found["steps"].max(), 20):
                    fitted.append({"objective": objective, "tokens_per_step": size, "steps": steps,
                                   "rate": transfer.predict(law, int(round(steps)), int(size))[0]})
    fitted = pd.DataFrame(fitted, columns=["objective", "tokens_per_step", "steps", "rate"])
    return [("rate_transfer", plots.rate_transfer(pd.concat(cells, ignore_index=True), fitted),
             f"The best bias rate against the run's length: lowest val loss with MaxVio_global <= {BALANCED_MAXVIO} (left) "
             "and lowest "
             "time-averaged MaxVio_batch (right), per tokens-per-step; lines: the fitted law log u* = c + p log T + "
             "q log S; dotted: the square-root hypothesis's slope. `moe-harness rate` gives the numbers.")]


def dynamics_figure(steps: pd.DataFrame, ok: pd.DataFrame, palette: dict) -> list[Figure]:
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


def front_figure(ok: pd.DataFrame, palette: dict) -> list[Figure]:
    found = verdicts.front_rows(ok)[1]
    if not found:
        return []
    return [("front", plots.front(ok, pd.concat(found, ignore_index=True), palette),
             "Each method against the reference family's Pareto front at its own balance: a point under the grey "
             "line of its seed (same marker) beats the family at that MaxVio; left of the line's most balanced end "
             "and no higher, it dominates the family; hollow: family members another member beats on both.")]
