"""The scope study's page and README paragraph (experiments/scope.toml): Loss-Free against three
fronts of the aux loss over alpha, one per scope of the balance (micro-batch, sequence, the whole
step), and the scopes against each other at the same alpha."""

from __future__ import annotations

import itertools

import pandas as pd

from harness.analysis import front
from harness.analysis.reference.base import (Built, verdicts_of, diff_ci, fold, md_table, p_cell, page, paired, provenance, ratio,
                                             ratio_resolved, resolved, differs, run_minutes, setup)
from harness.analysis.reference.data import Data
from harness.analysis.report.prose import could_answer

METHOD = "loss_free"
SCOPES = {"aux global_batch": "step", "aux micro_batch": "micro-batch", "aux sequence": "sequence"}
ALPHA = "router.aux_alpha"


def means(ok: pd.DataFrame) -> pd.DataFrame:
    rows = {}
    for variant, part in ok.groupby("variant", sort=False):
        per_seed = ", ".join(f"{v:.3f}" for v in part.sort_values("seed")["maxvio_global"])
        rows[variant] = {"val loss": f"{part['val_loss'].mean():.3f}",
                         "MaxVio global (per seed)": f"{part['maxvio_global'].mean():.3f} ({per_seed})",
                         "MaxVio batch": f"{part['maxvio_batch'].mean():.3f}"}
    order = sorted(rows, key=lambda v: (v != METHOD, v.split(" aux_alpha")[0],
                                        float(v.split("=")[1]) if "=" in v else 0))
    return pd.DataFrame.from_dict(rows, orient="index").loc[order].rename_axis("variant")


def verdicts(ok: pd.DataFrame) -> pd.DataFrame:
    table = verdicts_of(ok)
    table = table[(table["kind"] == "front") & (table["variant"] == METHOD)]
    return pd.DataFrame({"against": [f"aux, {SCOPES.get(a, a)} scope" for a in table["against"]],
                         "Loss-Free's distance to the front at its own MaxVio [95 %]":
                             [diff_ci({"diff": r.diff, "low": r.low95, "high": r.high95}) if r.n >= 2 else
                              f"{r.diff:+.3f} (one seed)" for r in table.itertuples()],
                         "verdict": table["verdict"],
                         "p": [p_cell(r, ("p",)) for r in table.to_dict("records")],
                         "where its seeds sit": table["position"]})


def scope_pairs(ok: pd.DataFrame) -> pd.DataFrame:
    """At each alpha, every two scopes paired over the seeds: val loss and MaxVio_global."""
    rows = []
    by = ok[ok["front_family"].isin(SCOPES)] if "front_family" in ok else ok.iloc[:0]
    for alpha, part in by.groupby(ALPHA):
        names = dict(zip(part["front_family"], part["variant"]))
        for a, b in itertools.combinations(SCOPES, 2):
            if a in names and b in names:
                d, r = paired(ok, "val_loss", names[a], names[b]), ratio(ok, "maxvio_global", names[a], names[b])
                rows.append({"alpha": f"{alpha:g}", "scopes": f"{SCOPES[a]} - {SCOPES[b]}", "val loss": diff_ci(d),
                             "loss": resolved(d), "MaxVio global ratio": fold(r), "MaxVio": ratio_resolved(r),
                             "_diff": d["diff"], "_resolved": differs(d)})
    return pd.DataFrame(rows)


def findings(ok: pd.DataFrame, pairs: pd.DataFrame) -> str:
    table = verdicts_of(ok)
    step = table[(table["kind"] == "front") & (table["variant"] == METHOD) & (table["against"] == "aux global_batch")]
    fronts = ok[ok["front_family"].isin(SCOPES)] if "front_family" in ok else ok.iloc[:0]
    reach = fronts.groupby("front_family")["maxvio_global"].min()
    means = fronts.groupby(["front_family", ALPHA])["maxvio_global"].mean()
    method = ok.loc[ok["variant"] == METHOD, "maxvio_global"].mean()
    out = []
    if len(step):
        row = step.iloc[0]
        out.append(f"Against the step-scope (global-batch) front, Loss-Free's verdict is "
                   f"**{row['verdict']}** (exploratory; its seeds: {row['position']}).")
    for a, b in [("step", "micro-batch"), ("step", "sequence"), ("micro-batch", "sequence")]:
        part = pairs[pairs["scopes"] == f"{a} - {b}"] if len(pairs) else pairs
        if len(part):
            lower = int((part["_diff"] < 0).sum())
            out.append(f"At the same alpha, {a} scope's val loss is below {b} scope's at {lower} of {len(part)} "
                       f"alphas; the paired 95 % interval excludes 0 (either way) at {int(part['_resolved'].sum())}.")
    if "aux sequence" in means.index.get_level_values(0):
        out.append(f"The sequence-wise loss's lowest mean MaxVio_global over the alphas is "
                   f"{means.loc['aux sequence'].min():.3f}.")
    if len(means):
        best = means.idxmin()
        out.append(f"The best-balanced aux setting (mean over seeds) is {SCOPES[best[0]]} scope at alpha {best[1]:g}, "
                   f"{means.min():.3f}, against Loss-Free's {method:.3f}; the lowest single seed of each front: "
                   + ", ".join(f"{SCOPES[f]} {v:.3f}" for f, v in reach.items()) + ".")
    return " ".join(out)


@page("scope", "scope_cpu.md")
def scope(data: dict[str, Data]) -> Built:
    ok = data["scope"].ok
    pairs = scope_pairs(ok)
    shown = pairs.drop(columns=[c for c in pairs.columns if c.startswith("_")]) if len(pairs) else pairs
    reach = [front.family_reach(ok[ok["front_family"] == f], f"aux, {SCOPES[f]} scope") for f in SCOPES
             if (ok["front_family"] == f).any()]
    text = "\n\n".join([
        "# Does the scope of the balance matter more than the mechanism?",
        f"`moe-harness run experiments/scope.toml --threads 1 --jobs 2`: {setup(ok)}; {len(ok)} runs, "
        f"{run_minutes(ok)} of run time. Ran on {provenance(ok)}. Data: `data/scope/`; this page: "
        "`moe-harness reference build scope`.",
        "Loss-Free (sign rule, u = 1e-2) against three fronts of the sigmoid aux loss over alpha in "
        "{0.01, 0.1, 0.3, 1}: micro-batch scope (each step split into 4 micro-batches of 4 sequences, the loss "
        "per micro-batch; with one micro-batch per step on one process it would be step scope), sequence scope "
        "(DeepSeek-V3's sequence-wise loss) and step scope (`global_batch`: the load of the whole step).",
        "## Means over seeds",
        md_table(means(ok)),
        "## What this study could answer",
        "\n".join(f"- {line}" for line in could_answer(verdicts_of(ok))),
        "## Loss-Free against each front",
        md_table(verdicts(ok), index=False),
        "\n".join(f"- {line}" for line in reach),
        "## The scopes against each other, at the same alpha",
        "Paired over the seeds (unadjusted 95 % intervals): val loss as the difference, MaxVio as the ratio.",
        md_table(shown, index=False) if len(shown) else "(no two scopes share an alpha)",
        "## Answer",
        findings(ok, pairs),
    ]) + "\n"
    readme = (f"**Does the scope of the balance matter more than the mechanism?** `experiments/scope.toml` sets "
              f"Loss-Free (u = 1e-2) against three fronts of the aux loss over alpha (0.01 to 1), {setup(ok)} "
              f"([results/reference/scope_cpu.md](results/reference/scope_cpu.md)). " + findings(ok, pairs))
    return Built(text, {"scope": readme})
