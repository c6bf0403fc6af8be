"""The smoke suite's page, README table and figure (experiments/smoke.toml), and what moves its
numbers: the same suite with `--jobs auto` (data/smoke_jobs_auto) and in one 2-thread process
(data/smoke_two_threads)."""

from __future__ import annotations

import pandas as pd

from harness.analysis import plots
from harness.analysis.reference.base import Built, by_variant, md_table, page, provenance, run_minutes, setup
from harness.analysis.reference.data import Data

COLUMNS = {"val_loss": ("val loss", "{:.3f}"), "val_bpb": ("val bits/byte", "{:.3f}"),
           "maxvio_global": ("MaxVio global", "{:.3f}"),
           "maxvio_global_worst": ("MaxVio global, worst layer", "{:.3f}"),
           "maxvio_batch": ("MaxVio batch", "{:.3f}"), "mean_k": ("experts/token", "{:.3f}"),
           "tokens_per_s": ("tokens/s", "{:,.0f}"), "dense_tokens_per_s": ("dense tokens/s", "{:,.0f}"),
           "throughput_ratio": ("speed / dense", "{:.2f}"), "cpu_threads": ("threads", "{:.0f}"),
           "cpu_utilisation": ("CPU used", "{:.2f}")}
README = ["val_loss", "maxvio_global", "maxvio_batch", "mean_k", "throughput_ratio"]
BIAS = ("loss_free", "dynamic_k")


def table(ok: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    rows = ok.set_index("variant").sort_values("maxvio_global")
    return pd.DataFrame({COLUMNS[c][0]: [COLUMNS[c][1].format(v) for v in rows[c]] for c in columns},
                        index=pd.Index(rows.index, name="variant"))


def moved(one: pd.DataFrame, two: pd.DataFrame) -> str:
    """How far each variant's numbers move between one thread per run and one 2-thread process."""
    a, b = (x.set_index("variant") for x in (one, two))
    parts = [f"{v} {a.loc[v, 'val_loss']:.3f} / {a.loc[v, 'maxvio_global']:.3f} -> {b.loc[v, 'val_loss']:.3f} / "
             f"{b.loc[v, 'maxvio_global']:.3f}" for v in a.index.intersection(b.index)]
    return "; ".join(parts)


def identical(one: pd.DataFrame, other: pd.DataFrame) -> bool:
    """Every variant's val loss, MaxVio and k the same to the last bit."""
    columns = ["val_loss", "maxvio_global", "maxvio_batch", "mean_k", "train_loss"]
    a, b = (x.set_index("variant").sort_index()[columns] for x in (one, other))
    return a.index.equals(b.index) and bool((a == b).all().all())


@page("smoke", "smoke_cpu.md", sources=("smoke", "smoke_jobs_auto", "smoke_two_threads"))
def smoke(data: dict[str, Data]) -> Built:
    ok, auto, two = data["smoke"].ok, data["smoke_jobs_auto"].ok, data["smoke_two_threads"].ok
    loss = by_variant(ok, "maxvio_global")
    bias = loss[[b for b in BIAS if b in loss]]
    text = "\n\n".join([
        "# The smoke suite on CPU",
        f"`moe-harness run experiments/smoke.toml --threads 1`: {setup(ok)}; {len(ok)} runs, {run_minutes(ok)} of run "
        f"time. Ran on {provenance(ok)}. Data: `data/smoke/`, this page: `moe-harness reference build smoke`.",
        md_table(table(ok, list(COLUMNS))),
        "## What moves these numbers",
        "A run is bit-for-bit reproducible for a fixed thread count: the table's runs used one thread each (`--threads "
        f"1`). The same suite with `--jobs auto` on these 2 cores (two workers of {int(auto['cpu_threads'].max())} "
        "thread each, data `data/smoke_jobs_auto/`) gives "
        f"{'the same numbers to the last bit' if identical(ok, auto) else 'other numbers'}. The same suite in one "
        "2-thread process "
        f"({run_minutes(two)} of run time, data `data/smoke_two_threads/`) sums its matmuls in another order, and the "
        f"bias methods follow another trajectory (val loss / MaxVio_global, one thread -> two): {moved(ok, two)}. "
        "The corpus is the running interpreter's standard library: another Python build gives another corpus "
        "(its sha256 is in every row, `data_sha256`), and other numbers.",
    ]) + "\n"
    readme = "\n\n".join([
        f"Measured with `--threads 1` (one thread per run, so the numbers repeat exactly on any machine with the same "
        f"torch and Python): {setup(ok)}; {run_minutes(ok)} of run time in all. "
        "([results/reference/smoke_cpu.md](results/reference/smoke_cpu.md) has more columns and what moves them.)",
        md_table(table(ok, README)),
        f"The bias methods balance the experts (MaxVio_global {bias.min():.3f} to {bias.max():.3f} against "
        f"{loss.get('softmax_topk', float('nan')):.3f} for the unbalanced control); the aux loss at the usual alpha "
        f"(1e-3) reaches {loss.get('softmax_topk_aux', float('nan')):.3f}. One seed: the loss differences here are "
        "not tested (the ablation below has seeds). Speed / dense is training tokens/s over a dense FFN of equal "
        "active width timed in the same process.",
    ])
    return Built(text, {"smoke": readme}, {"smoke_loss_vs_balance.png": plots.loss_vs_balance(ok)})
