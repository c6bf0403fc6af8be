"""The bias-rate transfer study's page and README paragraph (experiments/rate_transfer.toml and its
held-out sweep, experiments/rate_transfer_heldout.toml): the best Loss-Free rate per (run length,
tokens per step) cell, the law fitted through them with seed-level intervals, and the held-out
check, each printed as `moe-harness rate` prints it (the same functions)."""

from __future__ import annotations

import pandas as pd

from harness.analysis import rate, transfer
from harness.analysis.reference.base import Built, md_table, page, provenance, run_minutes
from harness.analysis.reference.data import Data
from harness.metric_registry import BALANCED_MAXVIO

TARGET = (1600, 512)  # the held-out sweep's steps and tokens per step
USER = (25_000, 1024)  # a user's run, far past the study: the law extrapolated


def study(data: Data) -> pd.DataFrame:
    return transfer.study_runs(data.ok, data.steps[["run_id", "maxvio_batch"]])


def cells_table(runs: pd.DataFrame) -> pd.DataFrame:
    loss, balance = (transfer.best_rates(runs, o, BALANCED_MAXVIO) for o in ("val_loss", "maxvio_time"))
    feasible = runs.groupby(["steps", "tokens_per_step", transfer.RATE])["maxvio_global"].mean() <= BALANCED_MAXVIO
    rows = []
    for a, b in zip(loss.itertuples(), balance.itertuples()):
        ok = feasible.loc[(a.steps, a.tokens_per_step)]
        rows.append({"steps": a.steps, "tokens/step": f"{a.tokens_per_step:,}",
                     "best u, val_loss": "none feasible" if pd.isna(a.rate) else
                     f"{a.rate:.2g}" + (" (edge)" if a.at_edge else ""),
                     "best u, maxvio_time": f"{b.rate:.3g}" + (" (edge)" if b.at_edge else ""),
                     "val loss there": "" if pd.isna(a.value) else f"{a.value:.3f}",
                     f"rates with MaxVio_global <= {BALANCED_MAXVIO:g}": f"{int(ok.sum())} of {len(ok)}"})
    return pd.DataFrame(rows)


def by_rate(runs: pd.DataFrame, metric: str, fmt: str = "{:.3f}") -> pd.DataFrame:
    """Cells x rates: the seed mean of `metric`."""
    table = runs.groupby(["steps", "tokens_per_step", transfer.RATE])[metric].mean().unstack(transfer.RATE)
    table.index = [f"{s} x {t:,}" for s, t in table.index]
    table.columns = [f"{u:g}" for u in table.columns]
    return table.map(fmt.format).rename_axis("steps x tokens")


def heldout(data: Data) -> dict[str, pd.DataFrame]:
    runs = data.ok[data.ok[transfer.RATE].notna()]
    return {"val_loss": runs, "maxvio_time": transfer.study_runs(runs, data.steps[["run_id", "maxvio_batch"]])}


def answer(runs: pd.DataFrame, check: dict[str, pd.DataFrame], objective: str) -> tuple[str, dict]:
    """What `moe-harness rate results/rate_transfer --steps 1600 --tokens-per-step 512 --objective O
    --check results/rate_transfer_heldout` prints, and the prediction."""
    steps, tokens = TARGET
    lines, at, cells = rate.law_text("results/rate_transfer", "loss_free", runs, steps, tokens, objective,
                                     BALANCED_MAXVIO)
    metric = "val_loss" if objective == "val_loss" else "maxvio_time"
    at["sqrt"] = rate.sqrt_prediction(cells, steps, tokens)
    lines += rate.check_text("results/rate_transfer_heldout", check[objective], metric, at, at["sqrt"])
    lines += [f"  warning: {w}" for w in rate.warnings_for(runs, steps, tokens, law="the fitted law", tokens_term=True)]
    return "\n".join(lines), at


def dynamics(runs: pd.DataFrame) -> pd.DataFrame:
    """The dynamics rule u* = sqrt(A / (B T)) fed the runs of one length (the smallest tokens per step)."""
    smallest = runs[runs["tokens_per_step"] == runs["tokens_per_step"].min()]
    rows = []
    for steps, part in smallest.groupby("steps"):
        r = rate.recommend(part, TARGET[0])
        rows.append({"fed runs of": f"{steps} steps", "A (geometric mean)": f"{r['A']:.2f}",
                     "B (geometric mean)": f"{r['B']:.0f}", f"u* for {TARGET[0]:,} steps": f"{r['rate']:.2g}"})
    return pd.DataFrame(rows)


def inside(value: float, interval: dict) -> str:
    return "inside" if interval["low"] <= value <= interval["high"] else "outside"


def loss_exponent(runs: pd.DataFrame) -> str:
    p, low, high = transfer.seed_level(runs, "val_loss", BALANCED_MAXVIO)["p"]
    holds = [name for name, value in (("0", 0.0), ("-0.5", -0.5)) if low <= value <= high]
    return (f"By the val loss (among rates with MaxVio_global <= {BALANCED_MAXVIO:g}) the exponent is {p:.2f} "
            f"(interval {low:.2f} to {high:.2f}" + (f", holding {' and '.join(holds)}" if holds else "") + ")"
            + (": at this scale the val loss cannot tell the square-root law from no dependence."
               if len(holds) == 2 else "."))


def for_a_user(runs: pd.DataFrame) -> str:
    fit = transfer.seed_level(runs, "maxvio_time", BALANCED_MAXVIO)
    user = transfer.seed_prediction(fit, *USER)
    return (f"The balance-optimal u for {USER[0]:,} steps x {USER[1]:,} tokens by the law: {user['rate']:.2g} (95 % "
            f"prediction interval {user['pred_low']:.2g} to {user['pred_high']:.2g}; the law's exponent of the run "
            f"length p = {fit['p'][0]:.2f} [{fit['p'][1]:.2f}, {fit['p'][2]:.2f}]), an extrapolation "
            f"{USER[0] / runs['steps'].max():.0f}x past the longest run measured (the command warns).")


def head(data: dict[str, Data], runs: pd.DataFrame, check: dict[str, pd.DataFrame]) -> list[str]:
    study_runs, heldout_runs = data["rate_transfer"].ok, data["rate_transfer_heldout"].ok
    return [
        "# Does the best Loss-Free bias rate fall as sqrt(run length)?",
        "    moe-harness run experiments/rate_transfer.toml --threads 1\n"
        "    moe-harness run experiments/rate_transfer_heldout.toml --threads 1\n"
        "    moe-harness rate results/rate_transfer --steps 1600 --tokens-per-step 512 [--objective maxvio_time] "
        "--check results/rate_transfer_heldout",
        f"The study: {len(runs)} runs, {run_minutes(study_runs)} of run time; the held-out sweep "
        f"({TARGET[0]:,} steps, {TARGET[1]} tokens per step): {len(check['val_loss'])} runs, "
        f"{run_minutes(heldout_runs)}. `tiny` model, Loss-Free with the sign rule, u in "
        f"{{{', '.join(f'{u:g}' for u in sorted(runs[transfer.RATE].unique()))}}}. Ran on "
        f"{provenance(study_runs)}. Data: `data/rate_transfer/`, `data/rate_transfer_heldout/`; this "
        "page: `moe-harness reference build rate_transfer`.",
    ]


def cells_section(runs: pd.DataFrame) -> list[str]:
    return [
        "## The best rate per cell",
        "Seed means. Best u: `val_loss` is the lowest val loss among rates whose mean MaxVio_global is at most "
        f"{BALANCED_MAXVIO:g}; `maxvio_time` the lowest time-averaged MaxVio_batch (every logged step); both refined "
        "by a parabola in log u through the best grid rate and its neighbours. \"edge\": the best is the grid's (or "
        "the feasible set's) end, only a bound, left out of the fit.",
        md_table(cells_table(runs), index=False),
        "Val loss by rate (seed mean):", md_table(by_rate(runs, "val_loss")),
        "Time-averaged MaxVio_batch by rate (seed mean):", md_table(by_rate(runs, "maxvio_time")),
    ]


def heldout_table(check: dict[str, pd.DataFrame]) -> pd.DataFrame:
    runs = check["maxvio_time"]
    return pd.DataFrame({"val loss": by_rate(runs, "val_loss").iloc[0],
                         "MaxVio_global": by_rate(runs, "maxvio_global").iloc[0],
                         "time-averaged MaxVio_batch": by_rate(runs, "maxvio_time").iloc[0]}).T


@page("rate_transfer", "rate_transfer_cpu.md", sources=("rate_transfer", "rate_transfer_heldout"))
def rate_transfer(data: dict[str, Data]) -> Built:
    runs, check = study(data["rate_transfer"]), heldout(data["rate_transfer_heldout"])
    loss_text, _ = answer(runs, check, "val_loss")
    own = transfer.sweep_optimum(check["maxvio_time"], "maxvio_time")
    balance_text, balance = answer(runs, check, "maxvio_time")
    text = "\n\n".join(head(data, runs, check) + cells_section(runs) + [
        "## The answer for the held-out length, as `moe-harness rate` prints it",
        "Objective `val_loss`:", "\n".join("    " + line for line in loss_text.splitlines()),
        "Objective `maxvio_time`:", "\n".join("    " + line for line in balance_text.splitlines()),
        "## The held-out sweep", md_table(heldout_table(check)),
        "## The dynamics rule, fed one length at a time",
        "u* = sqrt(A / (B T)) with each run's A = settle_step x u and B = maxvio_batch / u; a rule whose A and B "
        "were constants of the model would give one answer whichever length fed it:",
        md_table(dynamics(runs), index=False),
        "## For a user", for_a_user(runs),
    ]) + "\n"
    p, low, high = transfer.seed_level(runs, "maxvio_time", BALANCED_MAXVIO)["p"]
    readme = (f"On the `tiny` model ([results/reference/rate_transfer_cpu.md](results/reference/rate_transfer_cpu.md), "
              f"{len(runs)} runs): the rate that minimises the time-averaged imbalance falls with the run length as "
              f"T^{p:.2f} (seed-level 95 % interval {low:.2f} to {high:.2f}; the square-root law's -0.5 is "
              f"{'inside' if low <= -0.5 <= high else 'outside'} it). Fitted on {runs['steps'].min()}-"
              f"{runs['steps'].max()} steps, it predicts u = {balance['rate']:.3g} for {TARGET[0]:,} steps, with a "
              f"95 % prediction interval for one new run's best rate of {balance['pred_low']:.3g} to "
              f"{balance['pred_high']:.3g}. A direct sweep at {TARGET[0]:,} steps puts its own optimum at "
              f"{own['rate']:.3g} (seed-level 95 % interval {own['low']:.3g} to {own['high']:.3g}): the prediction "
              f"is {inside(balance['rate'], own)} it, and the square-root extrapolation from the "
              f"{balance['sqrt'][0]:,}-step cell ({balance['sqrt'][2]:.3g}) is {inside(balance['sqrt'][2], own)} it"
              + (", so this check cannot tell the two laws apart. " if inside(balance['rate'], own) ==
                 inside(balance['sqrt'][2], own) == "inside" else ". ") + loss_exponent(runs))
    return Built(text, {"rate-transfer": readme})
