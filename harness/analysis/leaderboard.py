"""One ranked table over every study: a row per method and setting, grouped into divisions.

A *setting* is what a run's numbers depend on besides the method: the model (size or family,
layers, width, experts, k), the corpus and tokenizer, the steps and the tokens per step. The
**closed division** holds the setting that most studies share (the same model, data, steps and
tokens for every row, as MLPerf's closed division fixes them); every other setting is in the
**open division**, ranked only within itself. A run that two studies share (the same config_id
and seed: the same resolved config) is counted once, and its row names both studies.

Each row: val loss and MaxVio_global over seeds with 95 % intervals (stats.mean_interval),
tokens/s relative to the dense twin, the seeds and how many settled (steady_state), the paired
val-loss difference against the setting's baseline (the studies' `baseline` variant) with its
95 % interval, the verdict against the aux-loss front where a study judged one (its own
verdict table, the words as STATISTICS.md allows them), and a rank interval.

Rank intervals resample seeds, arena-style: B times, draw the setting's seeds with replacement
(one draw for every row, so the rows stay paired by seed), rank the rows by their mean val loss
over the drawn seeds, and report the 2.5 and 97.5 percentiles of each row's rank. A row whose
interval reaches rank 1 is **tied with the first**. With 3 seeds a draw has only 10 distinct
outcomes: the intervals are coarse, and wide where rows are close.

    rows = leaderboard_rows({"methods": runs_frame, ...}, verdicts={"methods": verdict_frame})
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from harness.analysis import stats

SETTING_KEYS = ("size", "model.family", "model.num_layers", "model.dim", "model.num_experts", "model.top_k",
                "data_source", "tokenizer_vocab", "train.steps", "tokens_per_step")
RESAMPLES = 2000  # seed draws per rank interval
SEED = 0  # NOTE: a fixed generator: the page is rebuilt from its data and must come out the same


def tokens_per_step(runs: pd.DataFrame) -> pd.Series:
    world = runs["world_size"] if "world_size" in runs else 1
    return (runs["train.batch_size"] * runs["train.grad_accum"] * runs["model.seq_len"] * world).astype(int)


def setting_of(runs: pd.DataFrame) -> pd.Series:
    """Per run, its setting as one readable string: `small, 600 steps x 2,048 tokens, stdlib/256`."""
    family = runs["model.family"].fillna("") if "model.family" in runs else pd.Series("", index=runs.index)
    model = np.where(family.astype(str).isin(["", "harness", "nan"]), runs["size"].astype(str) + " proxy",
                     runs["size"].astype(str) + " " + family.astype(str))
    return pd.Series([f"{m} ({int(layers)}x{int(dim)}, {int(e)} experts, k={int(k)}), {int(steps):,} steps x "
                      f"{int(tokens):,} tokens, {source}/{int(vocab)}"
                      for m, layers, dim, e, k, steps, tokens, source, vocab in zip(
                          model, runs["model.num_layers"], runs["model.dim"], runs["model.num_experts"],
                          runs["model.top_k"], runs["train.steps"], tokens_per_step(runs), runs["data_source"],
                          runs["tokenizer_vocab"])], index=runs.index)


def pooled_runs(studies: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every study's completed runs in one frame, with `study`, `setting` and `row`: runs that
    trained the same (one setting and seed, and bit-identical val loss, train loss and MaxVio) are
    one run whichever study or label ran them (a config run again by a later study; an aux scope
    that equals another on one process without accumulation), kept once, with every label in
    `labels` and every study in `studies`."""
    frames = []
    for name, runs in studies.items():
        ok = runs[runs["status"] == "ok"].copy()
        ok["study"] = name
        frames.append(ok)
    runs = pd.concat(frames, ignore_index=True)
    runs["setting"] = setting_of(runs)
    same = ["setting", "seed", "val_loss", "train_loss", "maxvio_global"]
    runs["row"] = runs.groupby(same, dropna=False)["config_id"].transform("first")
    runs["row"] = runs.groupby("config_id")["row"].transform("first")  # NOTE: a config is one row, all its seeds
    if "front" in runs:  # NOTE: a row is on a front if any run folded into it was (its label may not say so)
        family = runs["front_family"].fillna("").astype(str).where(runs["front"].fillna(False).astype(bool), "")
        runs["front_family"] = family.groupby(runs["row"]).transform(lambda s: next((f for f in s if f), ""))
    members = runs.groupby("row")[["study", "variant", "suite"]].apply(
        lambda f: tuple(dict.fromkeys(f.itertuples(index=False, name=None))))
    runs["members"] = runs["row"].map(members)  # ((study, label, suite), ...) of every run folded into the row
    runs["labels"] = runs["members"].map(lambda m: " = ".join(dict.fromkeys(label for _, label, _ in m)))
    runs["studies"] = runs["members"].map(lambda m: ", ".join(dict.fromkeys(study for study, _, _ in m)))
    return runs.drop_duplicates(["row", "seed"], keep="first").reset_index(drop=True)


def closed_setting(runs: pd.DataFrame) -> str:
    """The setting run by the most studies (ties: the one with the most runs)."""
    by = runs.groupby("setting").agg(studies=("study", "nunique"), runs=("run_id", "size"))
    return by.sort_values(["studies", "runs"], ascending=False).index[0]


def baseline_of(group: pd.DataFrame) -> str | None:
    """The row of a setting's baseline: the row the studies name as `baseline` (or its variant
    in this setting, `sigmoid_topk[model.family=olmoe]`), where exactly one config is it."""
    names = group.drop_duplicates("study")["baseline"].dropna().astype(str).value_counts().index \
        if "baseline" in group else []
    for name in names:  # NOTE: the one most of the setting's studies name first
        hits = group[(group["variant"] == name) | group["variant"].str.startswith(f"{name}[")]["row"].unique()
        if len(hits) == 1:
            return str(hits[0])
    return None


def rank_intervals(group: pd.DataFrame, metric: str = "val_loss") -> pd.DataFrame:
    """Per row (a config): its rank by mean `metric` (1 = lowest) and the 95 % interval of that rank over
    paired seed draws (a config without any drawn seed keeps its mean over its own seeds)."""
    table = stats.per_seed(group, metric, columns="row")  # seeds x rows
    values = table.to_numpy(dtype=float)  # [S, C], NaN where a config lacks a seed
    own = np.nanmean(values, axis=0)  # [C]
    draws = np.random.default_rng(SEED).integers(0, len(table), size=(RESAMPLES, len(table)))  # [B, S]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NOTE: a draw with none of a config's seeds
        means = np.nanmean(values[draws], axis=1)  # [B, C]
    ranks = rankdata(np.where(np.isnan(means), own, means), method="min", axis=1)
    low, high = np.percentile(ranks, [2.5, 97.5], axis=0, method="nearest")
    return pd.DataFrame({"rank": rankdata(own, method="min").astype(int), "rank_low": low.astype(int),
                         "rank_high": high.astype(int)}, index=table.columns)


def front_verdicts(verdicts: dict[str, pd.DataFrame]) -> dict[tuple[str, str], str]:
    """(study, variant) -> the study's verdicts against its aux-loss front(s), words and interval;
    a front other than the study's one front is named (the scope study has one per scope)."""
    found: dict[tuple[str, str], list[str]] = {}
    for study, table in verdicts.items():
        if not len(table) or "kind" not in table:
            continue
        for row in table[table["kind"] == "front"].to_dict("records"):
            against = str(row["against"])
            named = "" if against == "front" or against.startswith("front [") else f" (against {against})"
            found.setdefault((study, row["variant"]), []).append(f"{row['verdict']}{named}")
    return {key: "; ".join(words) for key, words in found.items()}


def interval(values, positive: bool = False) -> tuple[float, float, float]:
    return stats.mean_interval(values, positive=positive)


def setting_rows(group: pd.DataFrame, division: str, fronts: dict[tuple[str, str], str]) -> list[dict]:
    """The leaderboard rows of one setting: one per config."""
    base = baseline_of(group)
    table = stats.per_seed(group, "val_loss", columns="row")
    ranks = rank_intervals(group)
    leader = ranks["rank"].idxmin()
    rows = []
    for config_id, runs in group.groupby("row", sort=False):
        first = runs.iloc[0]
        loss, vio = interval(runs["val_loss"]), interval(runs["maxvio_global"], positive=True)
        speed = interval(runs["throughput_ratio"], positive=True) if "throughput_ratio" in runs else (math.nan,) * 3
        diff = stats.paired_difference(table[config_id], table[base]) if base and config_id != base else None
        verdict = "; ".join(f"{s}: {fronts[(s, v)]}" for s, v, _ in first["members"] if (s, v) in fronts)
        rank = ranks.loc[config_id]
        settled = runs["settled"].astype(bool).sum() if "settled" in runs else math.nan
        rows.append({
            "division": division, "setting": first["setting"], "method": first["labels"], "router": first["router"],
            "config_id": config_id, "seeds": int(runs["seed"].nunique()), "settled": settled,
            "val_loss": loss[0], "val_loss_low": loss[1], "val_loss_high": loss[2],
            "maxvio_global": vio[0], "maxvio_global_low": vio[1], "maxvio_global_high": vio[2],
            "speed_vs_dense": speed[0],
            "baseline": "" if base is None else str(group.loc[group["row"] == base, "variant"].iloc[0]),
            "diff_vs_baseline": math.nan if diff is None else diff["diff"],
            "diff_low": math.nan if diff is None else diff["low"], "diff_high": math.nan if diff is None else diff["high"],
            "front_verdict": verdict, "rank": int(rank["rank"]), "rank_low": int(rank["rank_low"]),
            "rank_high": int(rank["rank_high"]),
            "tied_with_first": bool(config_id != leader and rank["rank_low"] == 1),
            "front_family": str(first.get("front_family", "") or ""),
            "front_alpha": float(first["router.aux_alpha"]) if "router.aux_alpha" in runs else math.nan,
            "studies": first["studies"], "commit": ", ".join(sorted(runs["git_commit"].astype(str).unique())),
            "command": "; ".join(dict.fromkeys(f"moe-harness run experiments/{suite}.toml"
                                               for _, _, suite in first["members"])),
        })
    return rows


def leaderboard_rows(studies: dict[str, pd.DataFrame], verdicts: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """The leaderboard: a row per (setting, config), closed division first, each setting by rank."""
    runs = pooled_runs(studies)
    closed = closed_setting(runs)
    fronts = front_verdicts(verdicts or {})
    rows = []
    for setting in [closed, *sorted(set(runs["setting"]) - {closed})]:
        rows += setting_rows(runs[runs["setting"] == setting], "closed" if setting == closed else "open", fronts)
    frame = pd.DataFrame(rows)
    order = {s: i for i, s in enumerate(dict.fromkeys(frame["setting"]))}
    return frame.sort_values(["setting", "rank", "method"], key=lambda c: c.map(order) if c.name == "setting" else c,
                             kind="stable").reset_index(drop=True)
