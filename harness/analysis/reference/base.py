"""What every reference page shares: the registry of page builders, and the few helpers that turn
a study's data into the sentences and tables a page prints (where the machine and code came from,
how long the runs took, a table in Markdown, a mean with its interval)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from harness.analysis import stats
from harness.analysis.reference.data import Data
from harness.analysis.report.prose import verdict_table


@dataclass
class Built:
    text: str  # the page, Markdown
    readme: dict[str, str] = field(default_factory=dict)  # README blocks by name
    figures: dict[str, plt.Figure] = field(default_factory=dict)  # file name -> figure, beside the page


@dataclass(frozen=True)
class Page:
    name: str
    file: str  # under results/reference/
    sources: tuple[str, ...]  # data folders under results/reference/data/
    build: Callable[[dict[str, Data]], Built]
    make: Callable[[], dict[str, pd.DataFrame]] | None = None  # a study made by code: its tables


PAGES: dict[str, Page] = {}


def page(name: str, file: str, sources: tuple[str, ...] | None = None,
         make: Callable[[], dict[str, pd.DataFrame]] | None = None):
    """Register a page builder: `@page("smoke", "smoke_cpu.md")` on a function of its sources' Data.
    `make` (for a study that is a computation, not runs): the tables `reference ship NAME` stores."""
    def decorate(fn: Callable[[dict[str, Data]], Built]):
        if name in PAGES:
            raise ValueError(f"reference page {name!r} is already registered")
        PAGES[name] = Page(name, file, sources or (name,), fn, make)
        return fn

    return decorate


def provenance(runs: pd.DataFrame) -> str:
    """Where the runs ran: device, torch, Python, commit(s) and corpus fingerprint, from the rows."""
    def values(column):
        return ", ".join(sorted(runs[column].dropna().astype(str).unique())) if column in runs else "unknown"

    threads = values("cpu_threads") if "cpu_threads" in runs else "?"
    return (f"{values('device')} ({values('device_name')}), {threads} thread(s) per run, torch {values('torch_version')}, "
            f"Python {values('python_version')}, commit {values('git_commit')}, corpus {values('data_source')} "
            f"(sha256 {values('data_sha256')})")


def run_minutes(runs: pd.DataFrame) -> str:
    return f"{runs['wall_s'].sum() / 60:.0f} min"


def md_table(frame: pd.DataFrame, index: bool = True) -> str:
    """A DataFrame as a Markdown table (its index as the first column unless `index` is False)."""
    if frame.empty:
        return "(none)"
    frame = frame.reset_index() if index else frame
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)])


def mean_ci(values, fmt: str = "{:.3f}", positive: bool = False) -> str:
    """`1.402 [1.364, 1.440]`: the mean over seeds with its 95 % interval (log scale where positive)."""
    mean, low, high = stats.mean_interval(values, positive=positive)
    if np.isnan(low):
        return fmt.format(mean)
    return f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"


def paired(ok: pd.DataFrame, metric: str, group: str, base: str) -> dict:
    """The paired difference group - base of `metric` over their common seeds (stats.paired_difference)."""
    table = stats.per_seed(ok, metric)
    return stats.paired_difference(table[group], table[base])


def diff_ci(d: dict, fmt: str = "{:+.3f}") -> str:
    return f"{fmt.format(d['diff'])} [{fmt.format(d['low'])}, {fmt.format(d['high'])}]"


def by_variant(ok: pd.DataFrame, metric: str) -> pd.Series:
    """The seed mean of `metric` per variant label."""
    return ok.groupby("variant")[metric].mean()


def setup(runs: pd.DataFrame) -> str:
    """`tiny model (2 layers, width 64, 8 experts, k = 2), 400 steps of 1,024 tokens, 1 seed`, from the rows."""
    first = runs.iloc[0]
    tokens = int(first["train.batch_size"] * first["train.grad_accum"] * first["model.seq_len"] * first.get("world_size", 1))
    steps = sorted(runs["train.steps"].astype(int).unique())
    seeds = runs["seed"].nunique()
    return (f"`{first['size']}` model ({int(first['model.num_layers'])} layers, width {int(first['model.dim'])}, "
            f"{int(first['model.num_experts'])} experts, k = {int(first['model.top_k'])}), "
            f"{'/'.join(f'{s:,}' for s in steps)} steps of {tokens:,} tokens, {seeds} seed{'s' if seeds > 1 else ''}")


def ratio(ok: pd.DataFrame, metric: str, group: str, base: str) -> tuple[float, float, float]:
    """(geometric mean of group / base, low, high) over their common seeds: the paired log ratios'
    95 % t-interval, back on the ratio scale."""
    table = stats.per_seed(ok, metric)
    both = table[[group, base]].dropna()
    return stats.geometric_interval(both[group] / both[base])


def fold(r: tuple[float, float, float]) -> str:
    """`x29 fewer [x22, x38]` for a ratio below 1, `x1.4 more [...]` above."""
    mean, low, high = r
    if mean < 1:
        return f"{1 / mean:.3g}-fold lower [{1 / high:.3g}, {1 / low:.3g}]"
    return f"{mean:.3g} times as high [{low:.3g}, {high:.3g}]"


# NOTE: the words of an exploratory paired comparison (STATISTICS.md): its unadjusted two-sided test
DIFFERENT, INCONCLUSIVE = "different (exploratory)", "inconclusive"


def ratio_differs(r: tuple[float, float, float]) -> bool:
    return not np.isnan(r[1]) and (r[1] > 1 or r[2] < 1)


def ratio_resolved(r: tuple[float, float, float]) -> str:
    """Whether a ratio's unadjusted 95 % interval excludes 1, in words."""
    if np.isnan(r[1]):
        return "one seed: inconclusive"
    return DIFFERENT if ratio_differs(r) else f"{INCONCLUSIVE}: the interval contains 1"


def differs(d: dict) -> bool:
    return d["n"] >= 2 and (d["low"] > 0 or d["high"] < 0)


def resolved(d: dict) -> str:
    """Whether a paired unadjusted 95 % interval excludes 0, in words a page prints beside it."""
    if d["n"] < 2:
        return "one seed: inconclusive"
    return DIFFERENT if differs(d) else f"{INCONCLUSIVE}: the interval contains 0"


def mean_sd_ci(values, fmt: str = "{:.3f}", positive: bool = False) -> str:
    """`1.398 ± 0.011 [1.370, 1.425]`: mean ± sd over seeds with the 95 % interval."""
    x = pd.Series(values).dropna().astype(float)
    mean, low, high = stats.mean_interval(x, positive=positive)
    if len(x) < 2:
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.format(x.std(ddof=1))} [{fmt.format(low)}, {fmt.format(high)}]"


def verdict_kind(verdict: str) -> str:
    """A verdict for a table cell: its words with the distance and interval, without the detail
    after a colon ('not distinguishable from the front, d = -0.042 [-0.085, +0.002]')."""
    return str(verdict).split(": ")[0] if not str(verdict).startswith(("mixed", "withheld")) else str(verdict)


def p_cell(row: dict, columns: tuple[str, ...] = ("p_tost", "p_diff", "p_noneq", "p")) -> str:
    """The smallest p a verdict used, labelled with its error control: `0.004 (primary, Holm)` or
    `0.031 (exploratory, unadjusted)`."""
    values = [row.get(f"{c}_adjusted") for c in columns if pd.notna(row.get(f"{c}_adjusted"))]
    if not values:
        return ""
    primary = row.get("role") == "primary"
    how = ("primary, Holm" if str(row.get("correction", "")).startswith("holm") else "primary") if primary \
        else "exploratory, unadjusted"
    return f"{min(values):.2g} ({how})"


def error_control(table: pd.DataFrame) -> str:
    """One sentence: which tests form the suite's primary set and how many; the rest exploratory."""
    if not len(table) or "role" not in table:
        return "No verdicts."
    primary = table[table["role"] == "primary"]
    if not len(primary):
        return ("The suite declared no primary comparisons, so every verdict here is exploratory: each test "
                "judged alone at 0.05, unadjusted (a screen, not a finding).")
    names = ", ".join(f"{r['variant']} vs {r['against']}" for r in primary.to_dict("records"))
    return (f"Primary comparisons (pre-registered; {primary['correction'].iloc[0]}): {names}. Every other verdict "
            "is exploratory: judged alone at 0.05, unadjusted.")


_VERDICTS: dict[int, tuple[pd.DataFrame, pd.DataFrame]] = {}


def verdicts_of(ok: pd.DataFrame) -> pd.DataFrame:
    """The suite's verdict table of these runs (report/prose.py), computed once per runs frame: a
    page reads it in several places."""
    cached = _VERDICTS.get(id(ok))
    if cached is None or cached[0] is not ok:
        _VERDICTS.clear()  # NOTE: one page at a time; never serve a frame that was freed and its id reused
        _VERDICTS[id(ok)] = cached = (ok, verdict_table(ok))
    return cached[1]
