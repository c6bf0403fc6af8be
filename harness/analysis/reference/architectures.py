"""The architectures study's page and README paragraph (experiments/architectures.toml): the same
methods on the harness proxy and inside four transformers families, each judged against the aux-loss
front of its own family, and whether the proxy's order of the methods carries over."""

from __future__ import annotations

import pandas as pd

from harness.analysis import blocked, concordance, stats
from harness.analysis.reference.base import (Built, verdicts_of, diff_ci, fold, md_table, page, paired, provenance, ratio,
                                             ratio_resolved, resolved, run_minutes, setup, verdict_kind)
from harness.analysis.verdicts import tost
from harness.analysis.verdicts import verdicts as suite_verdicts
from harness.analysis.reference.data import Data
from harness.analysis.report.prose import could_answer

METRICS = ("val_loss", "maxvio_global")
CONTROL = "sigmoid_topk"
METHODS = ("loss_free", "smebu", "quantile_balancing")
TRAITS = {
    "harness": "the proxy: RMSNorm, rotary attention, top-k FFN experts",
    "qwen3_moe": "softmax top-k, gates renormalised over the k (norm_topk_prob), every layer sparse",
    "olmoe": "softmax top-k, gates not renormalised, QK-norm",
    "deepseek_v3": "sigmoid scores, group-limited top-k (pairs of experts, half the groups eligible), gates "
                   "renormalised and scaled by 2.5, one shared expert, the first layer dense, latent attention",
    "mixtral": "softmax over the k chosen logits (renormalised), every layer sparse",
}


def labelled(ok: pd.DataFrame) -> pd.DataFrame:
    """The runs with their family and method (the label without its [grid] point)."""
    return ok.assign(family=concordance.families(ok), method=concordance.methods(ok))


def family_order(ok: pd.DataFrame) -> list[str]:
    found = set(concordance.families(ok))
    return [f for f in TRAITS if f in found] + sorted(found - set(TRAITS))


def sizes(ok: pd.DataFrame) -> pd.DataFrame:
    frame = labelled(ok)
    rows = {f: {"parameters": f"{frame.loc[frame['family'] == f, 'num_params'].iloc[0] / 1e6:.2f} M",
                "speed / dense": f"{frame.loc[frame['family'] == f, 'throughput_ratio'].median():.2f}",
                "what it keeps": TRAITS.get(f, "")} for f in family_order(ok)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("family")


def means(ok: pd.DataFrame) -> pd.DataFrame:
    """Methods x families: `val loss / MaxVio_global`, seed means."""
    frame = labelled(ok)
    cells = frame.groupby(["method", "family"])[list(METRICS)].mean()
    out = pd.DataFrame({f: [f"{cells.loc[(m, f), 'val_loss']:.3f} / {cells.loc[(m, f), 'maxvio_global']:.2f}"
                            if (m, f) in cells.index else "" for m in sorted(frame["method"].unique())]
                        for f in family_order(ok)}, index=sorted(frame["method"].unique()))
    return out.rename_axis("method (val loss / MaxVio global)")


def front_verdicts(ok: pd.DataFrame) -> pd.DataFrame:
    """Methods x families: each method's verdict against its own family's aux-loss front."""
    table = verdicts_of(ok)
    table = table[table["kind"] == "front"]
    table = table.assign(family=[v.split("model.family=")[1].rstrip("]") if "model.family=" in v else
                                 concordance.PROXY for v in table["variant"]],
                         method=table["variant"].str.split("[", n=1).str[0])
    cell = pd.Series([str(r["verdict"]) for r in table.to_dict("records")], index=pd.MultiIndex.from_frame(
        table[["method", "family"]]))
    return cell.unstack("family").reindex(columns=family_order(ok)).fillna("").rename_axis("method")


TRANSFER_MARGIN = 0.02  # val loss: how close a family's distance to its front must be to the proxy's


def front_distances(ok: pd.DataFrame) -> pd.DataFrame:
    """Per method, family and seed: the distance to the family's own front (verdicts.py), as a table
    [seed x (method, family)]."""
    distances = verdicts_and_places(ok)
    distances = distances.assign(family=[v.split("model.family=")[1].rstrip("]") if "model.family=" in v else
                                         concordance.PROXY for v in distances["variant"]],
                                 method=distances["variant"].str.split("[", n=1).str[0])
    return distances.pivot_table(index="seed", columns=["method", "family"], values="distance")


def verdicts_and_places(ok: pd.DataFrame) -> pd.DataFrame:
    """The per-seed places and distances of every method against its family's front."""
    grouped = stats.with_groups(ok)
    return suite_verdicts(grouped, stats.baseline_groups(grouped, CONTROL))[1]


def against_control(ok: pd.DataFrame) -> pd.DataFrame:
    """Per family, each balancing method against the unbalanced control of that family."""
    rows = []
    for family in family_order(ok):
        name = f"{CONTROL}[model.family={family}]"
        for method in METHODS:
            group = name.replace(CONTROL, method, 1)
            if group not in set(ok["variant"]) or name not in set(ok["variant"]):
                continue
            r, d = ratio(ok, "maxvio_global", group, name), paired(ok, "val_loss", group, name)
            rows.append({"family": family, "method": method, "MaxVio global, method / control": fold(r),
                         "MaxVio": ratio_resolved(r), "val loss, method - control": diff_ci(d),
                         "loss": resolved(d)})
    return pd.DataFrame(rows)


def concordance_tables(ok: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    pairs = pd.concat([concordance.pairs(ok, m) for m in METRICS], ignore_index=True)
    shown = pd.DataFrame({"metric": pairs["metric"], "families": pairs["a"] + " / " + pairs["b"],
                          "methods": pairs["methods"],
                          "tau of the seed means [95 % bootstrap]": [f"{r.tau:+.2f} [{r.low95:+.2f}, {r.high95:+.2f}]"
                                                                     for r in pairs.itertuples()],
                          "permutation p": pairs["p_permutation"].map("{:.2g}".format), "seeds": pairs["seeds"],
                          "left out": pairs["left_out"]})
    return shown, concordance.carries_over(pairs)


def what_transfers(ok: pd.DataFrame, verdicts: pd.DataFrame) -> list[str]:
    """Per family and balancing method: does the method's standing against the front transfer from
    the proxy? First the method x family interaction over all the methods (blocked.interaction, the
    seed as a block); then per method the family's distance minus the proxy's, paired over seeds:
    "transfers" only where the interaction test does not reject *and* that difference is
    equivalent within TRANSFER_MARGIN (TOST) and not different; "not shown" otherwise, with the
    figure. Then its loss and balance against the family's unbalanced control."""
    lines = []
    table = front_distances(ok)
    families = [f for f in family_order(ok) if f != concordance.PROXY]
    tests = {f: blocked.interaction(table.loc[:, table.columns.get_level_values(1).isin([concordance.PROXY, f])])
             for f in families}
    lines.append("Method x family interaction of the distances to the front, proxy against each family (F test, "
                 "seed as a block, unadjusted): " + "; ".join(
                     f"{f} F({t['df_num']:g}, {t['df_den']:g}) = {t['F']:.2f}, p = {t['p']:.2g}" for f, t in tests.items())
                 + ". Not rejecting is not evidence of no interaction: the per-method equivalence test below bounds it.")
    for method in [m for m in verdicts.index if m != CONTROL]:
        if (method, concordance.PROXY) not in table:
            continue
        said = []
        for family in [f for f in families if (method, f) in table]:
            d = (table[(method, family)] - table[(method, concordance.PROXY)]).dropna()
            test = tost(d, TRANSFER_MARGIN)
            bounded = str(test["verdict"]) == f"equivalent within ±{TRANSFER_MARGIN:g}"
            word = "transfers" if bounded and not tests[family]["p"] < 0.05 else "not shown"
            said.append(f"{family} {word} ({test['verdict'].split(', d =')[0]}: {test['diff']:+.3f} "
                        f"[{test['low95']:+.3f}, {test['high95']:+.3f}])")
        lines.append(f"{method}: {verdict_kind(verdicts.loc[method, concordance.PROXY])} on the proxy; its distance "
                     f"to the front on each family minus the proxy's: " + "; ".join(said) + ".")
    rows = against_control(ok).to_dict("records")
    costs = [r for r in rows if r["loss"].startswith("different")]
    lower = [r for r in rows if r["MaxVio"].startswith("different") and "lower" in r["MaxVio global, method / control"]]
    lines.append("Against the family's unbalanced control (95 %, unadjusted, exploratory): MaxVio_global is lower "
                 f"for {len(lower)} of {len(rows)} method-family pairs; a val-loss difference shows for "
                 + ("; ".join(f"{r['method']} on {r['family']} ({r['val loss, method - control']})" for r in costs)
                    or "none")
                 + f", and is inconclusive for the other {len(rows) - len(costs)} at 3 seeds.")
    return lines


def sections(ok: pd.DataFrame, verdicts: pd.DataFrame, pairs: pd.DataFrame, sentence: str,
             transfers: str) -> list[str]:
    return [
        "## The methods on each family",
        md_table(means(ok)),
        "## Against each family's own aux-loss front",
        "The reference front is the aux loss over alpha (1e-3 to 1) in the same family; verdicts as in the "
        "report (docs/methods.md, Verdicts): one test over all the seeds, a seed outside the front's MaxVio range "
        "counted as the bound that is conservative for the claim; exploratory (the suite declared no primary "
        "comparisons), unadjusted.",
        md_table(verdicts),
        "## Each balancing method against the unbalanced control of its family",
        "Paired over the 3 seeds (unadjusted 95 % intervals): MaxVio as the geometric mean ratio, val loss as the "
        "mean difference.",
        md_table(against_control(ok), index=False),
        "## Concordance: is the proxy's order of the methods the families' order?",
        "Kendall's tau between two families' orders of the seed means of the same methods (1 the same order, -1 "
        "reversed), with a 95 % bootstrap interval over the seeds and a permutation p (docs/methods.md, "
        "Concordance); on MaxVio the structurally separated methods are left out.",
        md_table(pairs, index=False),
        sentence,
        "## Does a method's standing transfer from the proxy?",
        transfers,
    ]


@page("architectures", "architectures_cpu.md")
def architectures(data: dict[str, Data]) -> Built:
    ok = data["architectures"].ok
    verdicts, (pairs, sentence) = front_verdicts(ok), concordance_tables(ok)
    transfers = "\n".join(f"- {line}" for line in what_transfers(ok, verdicts))
    text = "\n\n".join([
        "# Does a balancing verdict hold for the architecture you train?",
        f"`moe-harness run experiments/architectures.toml --threads 1 --jobs 1`: {ok['variant'].nunique()} "
        f"variant-family cells, {setup(ok)}; {len(ok)} runs, {run_minutes(ok)} of run time. Ran on "
        f"{provenance(ok)}. Data: `data/architectures/`; this page: `moe-harness reference build architectures`.",
        "Each family is built by transformers from a config the harness writes for the size name (`tiny`: the "
        "proxy's width, depth, experts and k), random init, with the harness Router in every MoE block; its "
        "experts, attention and norms are the family's own. Parameters differ where a family's traits add them "
        "(DeepSeek's shared expert and dense first layer, its latent attention).",
        md_table(sizes(ok)),
        "## What this study could answer",
        "\n".join(f"- {line}" for line in could_answer(verdicts_of(ok))),
        *sections(ok, verdicts, pairs, sentence, transfers),
    ]) + "\n"
    readme = "\n\n".join([
        f"`moe-harness run experiments/architectures.toml --threads 1`: no balancing, Loss-Free, SMEBU, quantile "
        "balancing and the aux loss over alpha inside Qwen3-MoE, OLMoE, DeepSeek-V3 and Mixtral models built "
        f"locally by transformers, beside the proxy; {setup(ok)}; {run_minutes(ok)} of run time "
        "([page](results/reference/architectures_cpu.md), with each verdict's seeds). Each method against its own "
        "family's aux-loss front:",
        md_table(verdicts.map(verdict_kind)),
        "Does a method's standing transfer from the proxy (the family's distance to its front minus the proxy's, "
        f"TOST at ±{TRANSFER_MARGIN:g})?",
        transfers,
        sentence,
    ])
    return Built(text, {"architectures": readme})
