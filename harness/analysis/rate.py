"""`moe-harness rate`: a bias rate u for the run you will do, from runs you did.

    moe-harness rate results/my_suite --steps 25000 [--tokens-per-step 2048] [--variant loss_free]
    moe-harness rate results/rate_transfer --steps 1600 --tokens-per-step 512 [--check results/heldout]

Two modes, chosen by the folder. A transfer study (rates x at least two run lengths, see
analysis/transfer.py and experiments/rate_transfer.toml) gives the fitted law: the best rate of
each (steps, tokens per step) cell, log u* = c + p log T (+ q log S) through them, refitted per
seed, and the target's u* with a prediction interval for one new run, the law's seed-level
interval, and the answer under other per-cell interpolants; `--check DIR` compares it with a
direct sweep's own optimum at the target (and the square-root law's prediction). Any other
folder gives the dynamics rule below.

The dynamics rule (docs/methods.md, "Controller dynamics"): a sign rule moves each
bias by at most u per step, so a run spends about A / u of its steps unbalanced, and once
balanced it jitters with a steady imbalance of about B u. Minimising A / (u T) + B u over u gives

    u* = sqrt(A / (B T))

From each measured run with rate u: A = settle_step x u, B = maxvio_batch / u (maxvio_batch is
the second-half mean, the steady imbalance). The recommendation is the geometric mean over the
runs of u* for the target T, with a 95 % t-interval on the log scale, and the expected settle
fraction A / (u* T). A and B need not stay fixed as the run grows (experiments/rate_transfer.toml
measures them on the tiny model), so the command prefers a study of several lengths and warns
when the target lies outside what was measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis import stats, transfer
from harness import tables
from harness.metric_registry import BALANCED_MAXVIO

NEEDED = ("settle_step", "maxvio_batch", "router.bias_rate", "train.steps")


def base_labels(runs: pd.DataFrame) -> pd.Series:
    """Each run's variant label without the [grid] point a suite appends (`loss_free[train.steps=100]`)."""
    return runs["variant"].astype(str).str.split("[", n=1).str[0]


def measured_runs(folder: Path, variant: str | None) -> pd.DataFrame:
    """The complete runs of `folder` with a rate-driven controller and its dynamics."""
    if not tables.has_results(folder):
        raise FileNotFoundError(2, "No results (run `moe-harness run SUITE.toml` first)", str(folder))
    runs = tables.read(folder, "runs")
    runs = runs[runs["status"] == "ok"] if "status" in runs else runs
    missing = [c for c in NEEDED if c not in runs]
    if missing:
        raise ValueError(f"{folder}: its runs have no controller dynamics ({missing} missing); run a suite with a "
                         "bias controller (router.bias_mode, e.g. loss_free) with this version first")
    unsettled = int(runs["settle_step"].isna().sum())
    runs = runs.dropna(subset=list(NEEDED))
    # NOTE: a controller without a rate (quantile) has no bias_travel: it is not driven by u
    driven = runs["bias_travel"].notna() if "bias_travel" in runs else False
    runs = runs[(runs["router.bias_rate"] > 0) & (runs["maxvio_batch"] > 0) & driven]
    if variant is not None:  # a suite's label, or the label of one point of its [grid] (`label[key=value,...]`)
        labels = sorted(set(runs["variant"]) | set(base_labels(runs)))
        if variant not in labels:
            raise ValueError(f"--variant {variant!r} is not among the runs with a rate-driven controller: {labels}")
        runs = runs[(runs["variant"] == variant) | (base_labels(runs) == variant)]
    if not len(runs):
        why = (f" that settled: {unsettled} run(s) still trend over their last quarter (no settle_step); run them "
               "longer (train.steps)" if unsettled else "")
        raise ValueError(f"{folder}: no complete run with a rate-driven bias controller (loss_free, dynamic_k, ...)"
                         + why)
    return runs


geometric = stats.geometric_interval  # (geometric mean, low, high), the interval about the same statistic


def recommend(runs: pd.DataFrame, steps: int) -> dict:
    """u* for a target of `steps` steps from each run's A and B: their geometric mean over the
    runs with its 95 % interval (a t-interval on the log scale, so the interval is about the
    same statistic as the estimate)."""
    u = runs["router.bias_rate"].to_numpy(float)
    a = runs["settle_step"].to_numpy(float) * u
    b = runs["maxvio_batch"].to_numpy(float) / u
    rate, low, high = geometric(np.sqrt(a / (b * steps)))
    return {"rate": rate, "low": low, "high": high, "runs": len(u), "settle_fraction": geometric(a / (rate * steps))[0],
            "A": geometric(a)[0], "B": geometric(b)[0]}


def warnings_for(runs: pd.DataFrame, steps: int, tokens_per_step: int | None, experts: int | None = None,
                 top_k: int | None = None, law: str = "the square-root law", tokens_term: bool = False) -> list[str]:
    out = []
    measured = runs["train.steps"].astype(int)
    if steps > 2 * measured.max() or steps < measured.min() / 2:
        out.append(f"the target's {steps:,} steps lie outside the measured {measured.min():,}-{measured.max():,} "
                   f"(x2 either way): {law} is extrapolated")
    if tokens_per_step is not None:
        per_step = transfer.tokens_per_step(runs)
        if not per_step.min() / 2 <= tokens_per_step <= 2 * per_step.max():
            out.append(f"the target's {tokens_per_step:,} tokens per step lie outside the measured "
                       f"{per_step.min():,}-{per_step.max():,} (x2 either way): "
                       + ("the fitted exponent is extrapolated" if tokens_term else "the law has no term for them"))
    for value, column, what in ((experts, "model.num_experts", "experts"), (top_k, "model.top_k", "k")):
        seen = sorted(runs[column].dropna().astype(int).unique()) if column in runs else []
        if value is not None and value not in seen:
            out.append(f"the target's {what} = {value} was not measured (runs had {seen}): the rate has no term for "
                       f"{what}, so this is the measured runs' answer, untested at {value}")
    return out


def rate_command(folder: str, steps: int, tokens_per_step: int | None = None, variant: str | None = None,
                 objective: str = "val_loss", cap: float = BALANCED_MAXVIO, check: str | None = None, experts: int | None = None,
                 top_k: int | None = None) -> str:
    """The text `moe-harness rate` prints."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps = {steps!r} must be a whole number of optimizer steps >= 1")
    if tokens_per_step is not None and tokens_per_step < 1:
        raise ValueError(f"--tokens-per-step = {tokens_per_step!r} must be a whole number >= 1")
    if objective not in transfer.OBJECTIVES:
        raise ValueError(f"--objective = {objective!r}; allowed: {sorted(transfer.OBJECTIVES)}")
    if not cap > 0:
        raise ValueError(f"--cap = {cap!r} must be a MaxVio_global above 0")
    for name, value in (("--experts", experts), ("--top-k", top_k)):
        if value is not None and value < 1:
            raise ValueError(f"{name} = {value!r} must be a whole number >= 1")
    runs = measured_runs(Path(folder), variant)
    study = transfer.is_study(runs)
    if study:
        lines = law_lines(Path(folder), runs, steps, tokens_per_step, objective, cap, check)
    elif check is not None:
        raise ValueError(f"--check needs a transfer study (rates x at least two run lengths); {folder} is not one")
    else:
        lines = dynamics_lines(folder, runs, steps)
    law = "the fitted law" if study else "the square-root law"
    tokens_term = study and transfer.tokens_per_step(runs).nunique() > 1
    lines += [f"  warning: {w}" for w in warnings_for(runs, steps, tokens_per_step, experts, top_k, law, tokens_term)]
    return "\n".join(lines)


def dynamics_lines(folder: str, runs: pd.DataFrame, steps: int) -> list[str]:
    r = recommend(runs, steps)
    # NOTE: one run has no spread: an interval over runs needs two (a t-interval of one value is nan)
    interval = (f"95 % interval {r['low']:.3g} to {r['high']:.3g}" if np.isfinite([r["low"], r["high"]]).all()
                else f"no interval: it needs at least 2 measured runs, {r['runs']} here")
    return [f"recommended bias rate u = {r['rate']:.3g} ({interval}) for {steps:,} steps",
            f"  from {r['runs']} run(s) of {folder}: A = settle_step x u = {r['A']:.3g} (geometric mean), "
            f"B = maxvio_batch / u = {r['B']:.3g}; u* = sqrt(A / (B T))",
            f"  expected: unbalanced for about {r['settle_fraction']:.1%} of the run, steady MaxVio_batch about "
            f"{r['B'] * r['rate']:.3g}",
            "  note: u* ~ 1/sqrt(T) is a hypothesis from the sign rule's dynamics, with A and B held fixed as the run "
            "grows; experiments/rate_transfer.toml measures both on the tiny model: prefer a study of two or "
            "more lengths (moe-harness rate STUDY)"]


def law_lines(folder: Path, runs: pd.DataFrame, steps: int, tokens: int | None, objective: str, cap: float,
              check: str | None) -> list[str]:
    variants = sorted(base_labels(runs).unique())  # NOTE: a study's rates and lengths are one label's [grid]
    if len(variants) > 1:
        raise ValueError(f"{folder} holds a study of several variants {variants}: choose one with --variant")
    study = transfer.study_runs(runs, tables.read(folder, "steps", columns=["run_id", "maxvio_batch"]))
    lines, at, cells = law_text(str(folder), variants[0], study, steps, tokens, objective, cap)
    if check is not None:
        check_runs, metric = sweep_runs(Path(check), objective)
        lines += check_text(str(check), check_runs, metric, at, sqrt_prediction(cells, steps, tokens))
    return lines


def law_text(name: str, variant: str, study: pd.DataFrame, steps: int, tokens: int | None, objective: str,
             cap: float) -> tuple[list[str], dict, pd.DataFrame]:
    """The fitted law's answer for the target, as `rate` prints it (and the prediction and the cells
    it came from): `study` is transfer.study_runs of one variant's runs."""
    cells = transfer.best_rates(study, objective, cap)
    fit = transfer.seed_level(study, objective, cap)
    at = transfer.seed_prediction(fit, steps, tokens)
    spread = transfer.interpolant_spread(study, objective, cap, steps, tokens)
    target = f"{steps:,} steps" + (f" at {tokens:,} tokens per step" if tokens else "")
    lines = [f"recommended bias rate u = {at['rate']:.3g} for {target}",
             f"  95 % prediction interval for one new run's best rate: {at['pred_low']:.3g} to {at['pred_high']:.3g} "
             f"(the law's own seed-level 95 % interval at the target: {at['low']:.3g} to {at['high']:.3g})",
             "  the same law through other per-cell interpolants: "
             + ", ".join(f"{name} {u:.3g}" for name, u in spread.items()),
             f"  from the law fitted to {name} ({variant}): log u* = c + p log T" + (" + q log S" if "q" in fit else "")
             + f" through {fit['law']['cells']} cells' seed-mean optima, refitted per seed ({fit['seeds']} seeds); best "
             f"u per cell = " + transfer.OBJECTIVES[objective].format(cap=cap),
             exponent_line("the run length", "p", fit, -0.5),
             f"  expected: unbalanced for about {transfer.settle_fraction(study, at['rate'], steps, tokens, cap):.1%} "
             f"of the run (settle fraction fitted on log u, log T and log S over the study's runs with MaxVio_global <= "
             f"{cap:g})"]
    if "q" in fit:
        lines.insert(5, exponent_line("the tokens per step", "q", fit, 0.0))
    edge = cells[cells["at_edge"] | cells["rate"].isna()]
    if len(edge):
        lines.append("  left out (best rate at the edge of the grid or no feasible rate): "
                     + ", ".join(f"{r.steps} steps x {r.tokens_per_step} tokens" for r in edge.itertuples()))
    return lines, at, cells


def exponent_line(what: str, key: str, fit: dict, hypothesis: float) -> str:
    """`p = -0.18 (seed-level 95 % interval ...)` and what the interval says about `hypothesis`:
    -1/2 (the square-root law) for p, 0 (no dependence) for q."""
    value, low, high = fit[key]
    j = {"p": 1, "q": 2}[key]
    per_seed = ", ".join(f"{c[j]:.2f}" for c in fit["seed_coef"].values())
    head = f"  exponent of {what}: {key} = {value:.2f}"
    if not low == low:
        return head + " (one seed's fit: no seed-level interval)"
    head += f" (seed-level 95 % interval {low:.2f} to {high:.2f}; per-seed fits {per_seed})"
    inside = low <= hypothesis <= high
    if key == "p":
        return head + f"; the square-root law's -0.5 is {'inside' if inside else 'outside'} it"
    if inside:
        return head + "; no evidence either way: the interval holds 0 (no dependence) and exponents of either sign"
    return head + f"; the best rate {'rises' if value > 0 else 'falls'} with the tokens per step"


def sqrt_prediction(cells: pd.DataFrame, steps: int, tokens: int | None) -> tuple[int, float, float]:
    """(the longest measured cell's steps, its best rate, the square-root law's extrapolation from it to
    the target): what a check must tell the fitted law from."""
    inside = cells[~cells["at_edge"] & cells["rate"].notna()]
    if tokens is not None and inside["tokens_per_step"].nunique() > 1:
        inside = inside.iloc[(inside["tokens_per_step"] - tokens).abs().argsort()]
        inside = inside[inside["tokens_per_step"] == inside["tokens_per_step"].iloc[0]]
    longest = inside.loc[inside["steps"].idxmax()]
    return int(longest["steps"]), float(longest["rate"]), float(longest["rate"] * (steps / longest["steps"]) ** -0.5)


def check_text(name: str, runs: pd.DataFrame, metric: str, at: dict, sqrt: tuple[int, float, float]) -> list[str]:
    """The direct sweep's own optimum with its seed-level interval against the prediction interval,
    whether the check can tell the fitted law from the square-root law, and the sweep's flat
    optimum; judged by the objective's own metric (val loss, or the time-averaged MaxVio_batch)."""
    own = transfer.sweep_optimum(runs, metric)
    best, flat = transfer.flat_optimum(runs, metric)
    what = "val loss" if metric == "val_loss" else "time-averaged MaxVio_batch"
    overlap = at["pred_low"] <= own["high"] and own["low"] <= at["pred_high"]
    fitted_in, sqrt_in = own["low"] <= at["rate"] <= own["high"], own["low"] <= sqrt[2] <= own["high"]
    tell = {(True, True): "cannot tell the fitted law from the square-root law (both predictions are inside it)",
            (True, False): "favours the fitted law (the square-root prediction is outside it)",
            (False, True): "favours the square-root law (the fitted law's prediction is outside it)",
            (False, False): "matches neither prediction"}[fitted_in, sqrt_in]
    lines = [f"  check against {name}: its own best rate {own['rate']:.3g} (seed-level 95 % interval {own['low']:.3g} "
             f"to {own['high']:.3g}, {own['seeds']} seeds, by {what})",
             f"  the prediction interval {at['pred_low']:.3g} to {at['pred_high']:.3g} "
             f"{'OVERLAPS' if overlap else 'MISSES'} it; the predicted {at['rate']:.3g} is "
             f"{'INSIDE' if fitted_in else 'OUTSIDE'} it",
             f"  the square-root law from the longest measured cell ({sqrt[0]:,} steps, best u {sqrt[1]:.3g}) predicts "
             f"{sqrt[2]:.3g}: the check {tell}",
             f"  flat optimum (paired {what} within noise of its best, {best:.3g}): {min(flat):.3g} to {max(flat):.3g}"]
    swept = sorted(runs[transfer.RATE].unique())
    if min(flat) <= swept[0] and max(flat) >= swept[-1]:
        lines.append(f"  note: the flat optimum is the whole swept range ({swept[0]:.3g} to {swept[-1]:.3g}): the sweep "
                     "cannot tell these rates apart at its seeds, so this check has no power")
    return lines


def sweep_runs(folder: Path, objective: str) -> tuple[pd.DataFrame, str]:
    """A direct sweep's complete runs, with the objective's own metric."""
    if not tables.has_results(folder):
        raise ValueError(f"--check {folder}: no results there (run the direct sweep at the target first)")
    runs = tables.read(folder, "runs")
    runs = runs[(runs["status"] == "ok") & runs[transfer.RATE].notna()] if "status" in runs else runs
    if not len(runs) or runs[transfer.RATE].nunique() < 3:
        raise ValueError(f"--check {folder}: needs a direct sweep of at least 3 bias rates")
    metric = "val_loss" if objective == "val_loss" else "maxvio_time"
    if metric == "maxvio_time":
        runs = transfer.study_runs(runs, tables.read(folder, "steps", columns=["run_id", "maxvio_batch"]))
    return runs, metric
