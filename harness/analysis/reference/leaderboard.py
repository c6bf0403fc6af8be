"""The leaderboard page (results/reference/leaderboard.html): every shipped study's runs as one
ranked table, a closed and an open division, with the loss-against-balance figure on top
(analysis/leaderboard.py computes the rows, report/html.py renders them)."""

from __future__ import annotations

import html

import pandas as pd

from harness.analysis.leaderboard import RESAMPLES, leaderboard_rows
from harness.analysis.reference.base import Built, page, verdicts_of
from harness.analysis.reference.data import Data
from harness.analysis.report.html import leaderboard_html

# every shipped study of runs; a study that only reruns another (the smoke suite under --jobs
# auto and in a 2-thread process, which its page compares) is in RERUNS instead
STUDIES = ("smoke", "ablation", "methods", "scope", "architectures", "rate_transfer", "rate_transfer_heldout")
RERUNS = {"smoke_jobs_auto": "smoke", "smoke_two_threads": "smoke"}


def intro(rows: pd.DataFrame, data: dict[str, Data]) -> list[str]:
    closed = rows[rows["division"] == "closed"]
    runs = sum(len(d.ok) for d in data.values())
    leader = closed.loc[closed["rank"] == 1, "method"]
    tied = closed.loc[closed["tied_with_first"], "method"].tolist()
    settled = rows["settled"].sum() / rows["seeds"].sum()
    return [
        f"{len(rows)} rows from {runs} completed runs of {len(data)} studies ({', '.join(data)}); "
        f"{len(closed)} rows in the closed division, {len(rows) - len(closed)} in the open one over "
        f"{rows.loc[rows['division'] == 'open', 'setting'].nunique()} settings. Built by <code>moe-harness reference "
        "build leaderboard</code> from <code>results/reference/data/</code>; <code>moe-harness reference check</code> "
        "fails if any number here differs from that data.",
        "<b>Divisions.</b> The closed division is the setting most studies share: the same model, corpus, steps and "
        "tokens per step for every row, so its rows compare directly. Every other setting (another model size, "
        "family, run length or batch) is in the open division and is ranked only within itself. Runs that trained "
        "identically (one setting and seed, bit-identical losses and MaxVio) count once, whichever study or label "
        "ran them; such a row lists every label (<code>a = b</code>) and study.",
        "<b>Rank intervals.</b> A row's rank orders the mean val loss within its setting. Its interval: the 2.5 and "
        f"97.5 percentiles of its rank over {RESAMPLES:,} draws of the setting's seeds with replacement (one draw "
        "for all rows, which stay paired by seed). A row whose interval reaches rank 1 is marked <i>tied with the "
        f"first</i>. With 3 seeds a draw has only 10 distinct outcomes: these intervals are coarse. In the closed "
        f"division the first by mean is {html.escape(', '.join(leader))}"
        + (f"; tied with it: {html.escape(', '.join(tied))}." if tied else "; no row is tied with it."),
        "<b>What the columns claim.</b> Intervals are 95 % over seeds (MaxVio's on the log scale). The difference "
        "against the setting's baseline (the variant its studies name as <code>baseline</code>) is paired over common "
        "seeds and unadjusted: exploratory, a screen, not a finding. The verdict against the aux-loss front is the "
        "study's own, in the words its test allows (<i>not distinguishable from the front</i> is not <i>on the "
        "front</i>); hover it for the distance and interval. Balance is judged on settled runs: "
        f"{settled:.0%} of the seeds behind these rows had settled (the slope of log MaxVio_batch over the last "
        "quarter indistinguishable from 0); the seeds column says how many per row, and a verdict on runs that had "
        "not settled says so.",
        "Speed is training tokens/s over the dense twin of equal active width timed in the same process, on the "
        "2-core CPU each study ran on; the commit and command columns say what produced each row.",
    ]


@page("leaderboard", "leaderboard.html", sources=STUDIES)
def leaderboard(data: dict[str, Data]) -> Built:
    rows = leaderboard_rows({name: d.runs for name, d in data.items()},
                            {name: verdicts_of(d.ok) for name, d in data.items()})
    return Built(leaderboard_html(rows, "moe-harness leaderboard: every shipped study in one table", intro(rows, data)))
