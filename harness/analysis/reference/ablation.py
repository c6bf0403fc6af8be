"""The ablation suite's page and README block (experiments/ablation.toml: every preset of the
design card, 3 seeds), and the paired-seeds page drawn from two of its arms."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from statsmodels.stats.power import TTestIndPower

from harness.analysis import stats
from harness.analysis.reference.base import (Built, diff_ci, fold, md_table, mean_sd_ci, page, paired, provenance,
                                             ratio, ratio_resolved, resolved, differs, run_minutes, setup)
from harness.analysis.reference.data import Data

# (method, its control): the balancing method against the same gate without it
PAIRS = [("loss_free", "sigmoid_topk"), ("loss_free_rms", "sigmoid_topk"), ("deepseek_v3", "sigmoid_topk"),
         ("dynamic_k", "sigmoid_topk"), ("loss_free_softmax", "softmax_topk"), ("sigmoid_topk_aux", "sigmoid_topk"),
         ("softmax_topk_aux", "softmax_topk")]
COLUMNS = {"val_loss": ("val loss", "{:.3f}", False), "maxvio_global": ("MaxVio global", "{:.3f}", True),
           "maxvio_batch": ("MaxVio batch", "{:.3f}", True), "mean_k": ("experts/token", "{:.2f}", False),
           "k_zero_frac": ("pairs with no expert", "{:.3f}", False),
           "throughput_ratio": ("speed / dense", "{:.2f}", True)}
README = ["val_loss", "maxvio_global", "mean_k"]


def means(ok: pd.DataFrame, columns: list[str], interval: bool = True) -> pd.DataFrame:
    """Per variant, mean ± sd [95 % interval] over seeds of each column, most balanced first."""
    order = ok.groupby("variant")["maxvio_global"].mean().sort_values().index
    rows = {}
    for variant in order:
        part = ok[ok["variant"] == variant]
        rows[variant] = {"runs": len(part)} | {
            COLUMNS[c][0]: mean_sd_ci(part[c], COLUMNS[c][1], COLUMNS[c][2]) if interval else
            f"{COLUMNS[c][1].format(part[c].mean())} ± {COLUMNS[c][1].format(part[c].std(ddof=1))}"
            for c in columns}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")


def against_controls(ok: pd.DataFrame) -> pd.DataFrame:
    """Each balancing method against its control: MaxVio_global as a paired ratio, val loss as a
    paired difference, both with 95 % intervals over the seeds."""
    rows = []
    for method, control in PAIRS:
        d, r = paired(ok, "val_loss", method, control), ratio(ok, "maxvio_global", method, control)
        rows.append({"method": method, "control": control, "MaxVio global, method / control": fold(r),
                     "MaxVio ratio": ratio_resolved(r), "val loss, method - control": diff_ci(d),
                     "loss difference": resolved(d)})
    return pd.DataFrame(rows)


def findings(ok: pd.DataFrame) -> str:
    """The README's reading of the table, every figure computed here."""
    lf, sm = (fold(ratio(ok, "maxvio_global", m, c)) for m, c in [("loss_free", "sigmoid_topk"),
                                                                   ("loss_free_softmax", "softmax_topk")])
    ds = fold(ratio(ok, "maxvio_global", "deepseek_v3", "sigmoid_topk"))
    aux = {m: ratio(ok, "maxvio_global", m, c) for m, c in [("sigmoid_topk_aux", "sigmoid_topk"),
                                                               ("softmax_topk_aux", "softmax_topk")]}
    losses = {m: paired(ok, "val_loss", m, c) for m, c in PAIRS if m != "dynamic_k"}
    unresolved = [m for m, d in losses.items() if not differs(d)]
    k = ok.groupby("variant")["k_zero_frac"].mean()
    dk = paired(ok, "val_loss", "dynamic_k", "loss_free")
    return (f"What this proxy says: Loss-Free's bias makes MaxVio_global {lf} than the same sigmoid gate without "
            f"it, {sm} on a softmax gate, and DeepSeek-V3's (the bias plus a small sequence loss) {ds} (paired "
            "ratios over the 3 seeds, 95 % intervals). The aux loss at alpha 1e-3 lowers it by "
            f"{100 * (1 - aux['sigmoid_topk_aux'][0]):.0f} % (sigmoid; {ratio_resolved(aux['sigmoid_topk_aux'])}) and "
            f"{100 * (1 - aux['softmax_topk_aux'][0]):.0f} % (softmax; {ratio_resolved(aux['softmax_topk_aux'])}). "
            f"In val loss, {len(unresolved)} of the {len(losses)} balanced top-k variants are inconclusive "
            f"against their unbalanced control ({', '.join(unresolved) or 'none'}: the paired 95 % interval contains 0 "
            "at 3 seeds, unadjusted; the intervals are in the full table): the test cannot tell, which says "
            "neither that the difference is zero nor that it is small. Dynamic k keeps the mean near k but "
            f"{100 * k['dynamic_k']:.0f} % of (layer, token) pairs use no expert, and its val loss is "
            f"{diff_ci(dk)} against Loss-Free ({resolved(dk)}). The budget-cap rule (Su eq. 4) collapsed: with k "
            f"only a ceiling nothing lifts the bias when the scores fall, and {100 * k['dynamic_k_cap']:.1f} % of "
            "pairs ended with no expert.")


@page("ablation", "ablation_cpu.md")
def ablation(data: dict[str, Data]) -> Built:
    ok = data["ablation"].ok
    text = "\n\n".join([
        "# The ablation suite on CPU",
        f"`moe-harness run experiments/ablation.toml --threads 1 --jobs 2`: {ok['variant'].nunique()} presets, "
        f"{setup(ok)}; bias presets "
        f"at u = 1e-2. {len(ok)} runs, {run_minutes(ok)} of run time (two at a time). Ran on {provenance(ok)}. "
        "Data: `data/ablation/`; this page: `moe-harness reference build ablation`.",
        "Mean ± sd over seeds [95 % interval; log scale for MaxVio and speed]. Tokens/s is left out: the runs "
        "shared 2 cores with other studies at low priority; speed / dense divides by a dense model timed in the "
        "same process, which cancels most of that.",
        md_table(means(ok, list(COLUMNS))),
        "## Each method against its control",
        "Paired over the seeds (a seed fixes the initialisation and the data order for every variant): MaxVio "
        "as the geometric mean ratio, val loss as the mean difference.",
        md_table(against_controls(ok), index=False),
        findings(ok),
    ]) + "\n"
    readme = "\n\n".join([
        f"`moe-harness run experiments/ablation.toml --threads 1 --jobs 2`: {ok['variant'].nunique()} presets, "
        f"{setup(ok)}; {run_minutes(ok)} of run time (two runs at a time) on the same 2-core VM. Mean ± sd over seeds "
        "([full table with 95 % intervals and each method against its control](results/reference/ablation_cpu.md)):",
        md_table(means(ok, README, interval=False)),
        findings(ok),
    ])
    return Built(text, {"ablation": readme})


def unpaired_seeds(diff: float, sd_a: float, sd_b: float, limit: int = 1000) -> float:
    """Seeds per arm for two independent samples: the smallest n at which a two-sample t-test at 5 %
    finds `diff` with 80 % power (statsmodels' TTestIndPower, the arms' pooled spread)."""
    n = np.arange(2, limit + 1)
    effect = abs(diff) / math.sqrt((sd_a ** 2 + sd_b ** 2) / 2)
    reached = TTestIndPower().power(effect_size=effect, nobs1=n, alpha=0.05, ratio=1.0) >= stats.POWER
    return float(n[np.argmax(reached)]) if reached.any() else math.inf


@page("paired", "paired_cpu.md", sources=("ablation",))
def paired_page(data: dict[str, Data]) -> Built:
    ok, base, arm = data["ablation"].ok, "sigmoid_topk", "loss_free"
    loss = stats.per_seed(ok, "val_loss")[[base, arm]].dropna()
    seeds = pd.DataFrame({f"{base} val loss": loss[base].map("{:.4f}".format),
                          f"{arm} val loss": loss[arm].map("{:.4f}".format),
                          "difference": (loss[arm] - loss[base]).map("{:+.4f}".format)})
    d = paired(ok, "val_loss", arm, base)
    sd = loss.std(ddof=1)
    rows = [{"metric": "val loss", f"{arm} - {base} [95 % interval]": diff_ci(d, "{:+.4f}"), "test (unadjusted)": resolved(d),
             "seeds for 80 % power": f"{d['seeds_needed']:.0f}"}]
    for metric in ("maxvio_global", "maxvio_batch"):
        r = ratio(ok, metric, arm, base)
        rows.append({"metric": metric, f"{arm} - {base} [95 % interval]": "ratio: " + fold(r),
                     "test (unadjusted)": ratio_resolved(r), "seeds for 80 % power": ""})
    n = len(loss)
    text = "\n\n".join([
        "# Paired seeds: how many a loss difference needs",
        f"Two arms of the ablation (data `data/ablation/`): {base} (the control) and {arm} (u = 1e-2), seeds "
        f"{', '.join(str(s) for s in loss.index)}; {setup(ok)}.",
        md_table(seeds),
        md_table(pd.DataFrame(rows), index=False),
        f"The seed-to-seed spread of each arm's loss (sd {sd[base]:.4f} and {sd[arm]:.4f}) against that of their "
        f"paired difference (sd {d['sd']:.4f}): a seed that is lucky for one arm is "
        f"{'lucky for the other too' if d['sd'] < min(sd) else 'not reliably lucky for the other'}. From the paired "
        f"spread, finding a true loss difference of 0.01 with 80 % power (paired t-test at 5 %) takes "
        f"{stats.seeds_needed(0.01, d['sd']):.0f} seeds; compared as independent samples with the arms' spreads it "
        f"would take {unpaired_seeds(0.01, sd[base], sd[arm]):.0f} seeds per arm. At {n} seeds an observed paired "
        f"difference must exceed about {stats.t975(n) * d['sd'] / math.sqrt(n):.3f} for its interval to exclude 0.",
    ]) + "\n"
    return Built(text)
