"""The methods study's page and README block (experiments/methods.toml): the field's balancing methods
and the 2025-26 ones, each against the aux-loss front over alpha and against Loss-Free (the
baseline, with an equivalence margin), and what each one's imbalance would cost an expert-parallel
system."""

from __future__ import annotations

import pandas as pd

from harness.analysis import stats
from harness.analysis.reference.base import (Built, verdicts_of, diff_ci, error_control, md_table, mean_ci, p_cell, page, paired,
                                             provenance, resolved, run_minutes, setup, verdict_kind)
from harness.analysis.reference.data import Data
from harness.analysis.report.prose import could_answer, tests_note

BASELINE = "loss_free"
AUX = "front aux_alpha=0.001"  # the Loss-Free paper's baseline, alpha 1e-3: the front's first member
NEW = {"expert_threshold": "exact (the paper's rule; its warm-up shortened to this run's)",
       "bip_dual": "reconstructed (the paper's update as far as it is written)",
       "dual_ascent": "exact for the update; its step eps chosen here",
       "phi_balance": "reconstructed (the price and potential forms are our reading)"}
COLUMNS = {"val_loss": ("val loss", "{:.3f}", False), "maxvio_global": ("MaxVio global", "{:.3f}", True),
           "maxvio_batch": ("MaxVio batch", "{:.3f}", True), "mean_k": ("experts/token", "{:.2f}", False),
           "ep4_efficiency": ("EP4 efficiency", "{:.3f}", True), "ep8_efficiency": ("EP8 efficiency", "{:.3f}", True),
           "drop_frac_cf1.25": ("drops at c=1.25", "{:.3f}", False),
           "throughput_ratio": ("speed / dense", "{:.2f}", True)}
DIFF = "val loss - Loss-Free [95 %, unadjusted]"
README = ["val_loss", "maxvio_global", "ep8_efficiency", "drop_frac_cf1.25"]


def present(ok: pd.DataFrame, *variants: str) -> bool:
    return all((ok["variant"] == v).any() for v in variants)


def means(ok: pd.DataFrame, columns: list[str], interval: bool = True) -> pd.DataFrame:
    order = ok.groupby("variant")["maxvio_global"].mean().sort_values().index
    rows = {v: {COLUMNS[c][0]: mean_ci(ok.loc[ok["variant"] == v, c], COLUMNS[c][1], COLUMNS[c][2]) if interval else
                COLUMNS[c][1].format(ok.loc[ok["variant"] == v, c].mean()) for c in columns} for v in order}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")


def verdicts(ok: pd.DataFrame) -> pd.DataFrame:
    """Per method: its verdict against the aux front and against Loss-Free (equivalence, margin 0.02)."""
    table = verdicts_of(ok)
    if not len(table):
        return pd.DataFrame()
    out = {}
    for r in table.to_dict("records"):
        cell = out.setdefault(r["variant"], {"against the aux front": "", "front: seeds": "", DIFF: "",
                                             "against Loss-Free (margin 0.02)": "", "p": ""})
        if r["kind"] == "front":
            cell["against the aux front"] = str(r["verdict"])
            cell["front: seeds"] = r["position"]
        elif r["kind"] == "equivalence" and r["metric"] == "val_loss":
            cell[DIFF] = f"{r['diff']:+.3f} [{r['low95']:+.3f}, {r['high95']:+.3f}]"
            cell["against Loss-Free (margin 0.02)"] = r["verdict"]
            cell["p"] = p_cell(r)
    return pd.DataFrame.from_dict(out, orient="index").rename_axis("method")


def short_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """The README's verdicts: the methods only (not the front's members or the baseline), each front
    verdict as its place (the page has the seeds)."""
    methods = [m for m in table.index if not m.startswith("front ") and m != BASELINE]
    short = table.loc[methods, ["against the aux front", "against Loss-Free (margin 0.02)"]]
    return short.map(verdict_kind)


def new_methods(ok: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for method, how in NEW.items():
        if not present(ok, method, BASELINE):
            continue
        part = ok[ok["variant"] == method]
        d = paired(ok, "val_loss", method, BASELINE)
        r = stats.geometric_interval(stats.per_seed(ok, "maxvio_global")[[method, BASELINE]].dropna()
                                     .pipe(lambda t: t[method] / t[BASELINE]))
        rows.append({"method": method, "how sure": how, "val loss - Loss-Free": diff_ci(d) + f" ({resolved(d)})",
                     "MaxVio global / Loss-Free": f"{r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]",
                     "settle step": f"{part['settle_step'].mean():.0f}" if part["settle_step"].notna().any() else "–",
                     "bias flips (2nd half)": f"{part['bias_flip_share'].mean():.2f}"
                     if part["bias_flip_share"].notna().any() else "–"})
    return pd.DataFrame(rows)


def ep_growth(ok: pd.DataFrame) -> str:
    """Does Loss-Free's expert-parallel advantage over the aux loss grow from EP 4 to EP 8?"""
    if not present(ok, BASELINE, AUX):
        return ""
    e4, e8 = (stats.per_seed(ok, m)[[BASELINE, AUX]].dropna() for m in ("ep4_efficiency", "ep8_efficiency"))
    gain4, gain8 = e4[BASELINE] - e4[AUX], e8[BASELINE] - e8[AUX]
    growth = (gain8 - gain4).dropna()
    mean, low, high = stats.t_interval(growth)
    return (f"Loss-Free against the aux loss at alpha 1e-3: EP4 efficiency {e4[BASELINE].mean():.3f} vs "
            f"{e4[AUX].mean():.3f} (x{e4[BASELINE].mean() / e4[AUX].mean():.2f}), EP8 {e8[BASELINE].mean():.3f} vs "
            f"{e8[AUX].mean():.3f} (x{e8[BASELINE].mean() / e8[AUX].mean():.2f}, ratios of the means); the gain "
            "grows from EP 4 to EP 8 by "
            f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] (per seed {', '.join(f'{g:+.3f}' for g in growth)}; t-test p = "
            f"{stats.t_test_p(growth):.2g}), as the Loss-Free paper's section 5.1 argues: with more devices one hot "
            "expert idles more of the others.")


def readings(ok: pd.DataFrame) -> list[str]:
    out = [ep_growth(ok)]
    if present(ok, "expert_choice"):
        part = ok[ok["variant"] == "expert_choice"]
        gap = stats.paired_difference(part.set_index("seed")["val_loss_causal"], part.set_index("seed")["val_loss"])
        out.append(f"Expert choice balances by construction (MaxVio_global {part['maxvio_global'].mean():.3f}) at val "
                   f"loss {part['val_loss'].mean():.3f}, but it sees later tokens: with a causal top-k of the same "
                   f"scores its loss is {part['val_loss_causal'].mean():.3f}, {diff_ci(gap)} more. Its verdicts use the loss "
                   "that sees later tokens.")
    if present(ok, "sinkhorn"):
        part = ok[ok["variant"] == "sinkhorn"]
        out.append(f"Sinkhorn balances training batches (MaxVio_batch {part['maxvio_batch'].mean():.2f}) but not "
                   f"evaluation (global {part['maxvio_global'].mean():.2f}), where it routes by the plain scores.")
    if present(ok, "switch_capacity"):
        part = ok[ok["variant"] == "switch_capacity"]
        out.append(f"switch_capacity (aux 1e-2, c = 1.25) dropped {100 * part['drop_frac'].mean():.0f} % of "
                   f"assignments in training, at val loss {part['val_loss'].mean():.3f}.")
    if present(ok, "deepseek_v3_grouped", "deepseek_v3"):
        d = paired(ok, "val_loss", "deepseek_v3_grouped", "deepseek_v3")
        out.append(f"Group-limited routing (4 groups, best 2) against deepseek_v3: val loss {diff_ci(d)} "
                   f"({resolved(d)}).")
    if present(ok, "smebu", BASELINE):
        flips = ok.groupby("variant")["bias_flip_share"].mean()
        out.append(f"SMEBU reverses the bias on {100 * flips['smebu']:.0f} % of second-half updates against "
                   f"{100 * flips[BASELINE]:.0f} % for the sign rule.")
    return [line for line in out if line]


@page("methods", "methods_cpu.md")
def methods(data: dict[str, Data]) -> Built:
    ok = data["methods"].ok
    table = verdicts(ok)
    text = "\n\n".join([
        "# Balancing methods against the aux-loss front and Loss-Free",
        f"`moe-harness run experiments/methods.toml --threads 1 --jobs 2`: {setup(ok)}; bias methods at u = 1e-2; "
        f"{len(ok)} runs, {run_minutes(ok)} of run time. Ran on {provenance(ok)}. Data: `data/methods/`; this page: "
        "`moe-harness reference build methods`.",
        "Mean over seeds [95 % interval; log scale for positive metrics]. EP N efficiency: mean over busiest of N "
        "simulated devices holding contiguous experts, per micro-batch, second half of training (1 = no device "
        "waits). Drops at c: the share of assignments a capacity-c system would drop.",
        md_table(means(ok, list(COLUMNS))),
        "## What this study could answer",
        "\n".join(f"- {line}" for line in could_answer(verdicts_of(ok))),
        "## Verdicts",
        "Each method against the front of the aux loss over alpha (1e-3 to 1) at its own balance (one test over "
        "all its seeds; outside the front's range a seed counts as the bound that is conservative for the "
        "claim), and against Loss-Free with an equivalence margin of 0.02 in val loss (TOST); the words are "
        "those of docs/methods.md, Verdicts. " + error_control(verdicts_of(ok)) + " " + tests_note(verdicts_of(ok)),
        md_table(table) if len(table) else "(no verdicts)",
        "## The 2025-26 methods",
        "Each against Loss-Free, paired over the seeds (unadjusted 95 % intervals); how sure the implementation "
        "is of the paper's rule (docs/methods.md has the sources).",
        md_table(new_methods(ok), index=False),
        "## Reading",
        "\n".join(f"- {line}" for line in readings(ok)),
    ]) + "\n"
    readme = "\n\n".join([
        f"`moe-harness run experiments/methods.toml --threads 1 --jobs 2`: the methods production frameworks ship, "
        f"the design card's and the 2025-26 ones, {setup(ok)}; {run_minutes(ok)} of run time "
        "([full tables, verdicts and notes](results/reference/methods_cpu.md)). Means over seeds:",
        md_table(means(ok, README, interval=False)),
        "Verdicts against the aux front (at the method's own balance, one test over its seeds) and against "
        "Loss-Free (TOST at 0.02); the suite declared no primary comparisons, so each is exploratory (unadjusted; "
        "the page has the seeds, intervals and p):" if not (verdicts_of(ok).get("role", pd.Series()) == "primary")
        .any() else "Verdicts against the aux front and against Loss-Free (the page has the seeds and intervals):",
        md_table(short_verdicts(table)) if len(table) else "",
        ep_growth(ok),
    ])
    return Built(text, {"methods": readme})
