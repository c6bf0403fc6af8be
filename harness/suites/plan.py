"""`moe-harness plan`: the seeds a suite's comparisons need before it runs, and what they cost.

    moe-harness plan experiments/methods.toml --pilot results/reference/data/methods [--jobs 2]

For each comparison of the suite (its `primary` entries, else every variant against the baseline
and every method against each front), from a pilot's paired spread over seeds (a finished suite's
results folder or a shipped study's data), the seeds that give 80 % power to

    equivalence   TOST at the suite's margin for the metric, if the true difference is 0
    difference    the paired t-test, if the true difference is the margin (the smallest one
                  that matters; `--effect` sets it where the suite has no margin)

(analysis/stats.py: statsmodels' TTestPower and a noncentral-t TOST power), and the hours that
many seeds of the whole suite take at the pilot's own time per run, split over `--jobs` workers.
A comparison the pilot cannot inform (a variant it never ran) says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness import tables
from harness.analysis import concordance, front, stats
from harness.analysis.reference.data import load
from harness.suites.suite import Suite, load_suite

DEFAULT_EFFECT = 0.02  # val loss: the smallest difference that matters, where a suite names no margin


def comparisons(suite: Suite) -> list[tuple[str, str]]:
    """(method, against): the primary entries, else every variant against the baseline and each front."""
    if suite.primary:
        return [tuple(part.strip() for part in entry.split(" vs ", 1)) for entry in suite.primary]
    labels = list(dict.fromkeys(cfg.variant.split("[", 1)[0] for cfg in suite.runs))
    methods = [label for label in labels if label not in suite.front]
    out = [(m, "baseline") for m in methods if m != suite.baseline]
    out += [(m, name) for name in sorted(set(suite.front_family.values())) for m in methods]
    return out


def pilot_runs(folder: Path) -> pd.DataFrame:
    """The pilot's complete runs: a results folder, or a shipped study's data folder."""
    folder = Path(folder)
    if not tables.has_results(folder):
        raise ValueError(f"--pilot {str(folder)!r} holds no runs; give a finished suite's results folder or a "
                         "shipped study's data (e.g. results/reference/data/methods)")
    runs = load(folder).runs if tables.is_single_file(folder) else tables.read(folder, "runs")
    return runs[runs["status"] == "ok"] if "status" in runs else runs


def paired_spread(runs: pd.DataFrame, method: str, against: str, baseline: str, fronts: set[str],
                  metric: str) -> tuple[float, int]:
    """(sd of the paired per-seed differences, seeds) of a comparison in the pilot."""
    labels = concordance.methods(runs)
    if against in fronts or against == "front":
        family = runs["front"].fillna(False).astype(bool) if "front" in runs else labels.isin([])
        if "front_family" in runs and against != "front":
            family &= runs["front_family"].astype(str) == against
        mine = runs[(labels == method) | family]
        d = front.front_distances(mine, family[mine.index])["distance"].dropna()
    else:
        other = baseline if against == "baseline" else against
        table = stats.per_seed(runs.assign(variant=labels), metric)
        if method not in table or other not in table:
            return math.nan, 0
        d, _ = stats.paired(table, method, other, metric)
        d = d.dropna()
    return (float(d.std(ddof=1)) if len(d) >= 2 else math.nan), len(d)


def tests_of(suite: Suite) -> int:
    """How many p-values the primary comparisons put into Holm's set (TOST, difference and
    beyond-the-margin for a comparison with a margin; one for a front or a plain difference)."""
    fronts = set(suite.front_family.values()) | {"front"}
    return sum(1 if against in fronts or not suite.margins else 3 for _, against in comparisons(suite))


def plan_alpha(suite: Suite) -> float:
    """The level each primary test is planned at: Bonferroni over Holm's set (Holm's first step, the
    strictest), so the plan holds whatever the other tests give; 0.05 without primary comparisons."""
    return 0.05 / tests_of(suite) if suite.primary else 0.05


def plan_rows(suite: Suite, runs: pd.DataFrame, effect: float | None, jobs: int) -> pd.DataFrame:
    labels = concordance.methods(runs)
    variants = len({cfg.variant for cfg in suite.runs if cfg.seed == suite.runs[0].seed})
    mine = runs[labels.isin({cfg.variant.split("[", 1)[0] for cfg in suite.runs})]
    per_run = float((mine if len(mine) else runs)["wall_s"].mean()) if "wall_s" in runs else math.nan
    fronts = set(suite.front_family.values())
    alpha = plan_alpha(suite)
    rows = []
    for method, against in comparisons(suite):
        is_front = against in fronts or against == "front"
        metric = "val_loss" if is_front else next(iter(suite.margins), "val_loss")
        margin = suite.margins.get(metric) if not is_front else None
        size = margin if margin is not None else effect if effect is not None else DEFAULT_EFFECT
        sd, seen = paired_spread(runs, method, against, suite.baseline, fronts, metric)
        equivalence = (stats.seeds_to_equivalence(0.0, sd, margin, alpha=alpha) if margin is not None and sd == sd
                       else math.nan)
        difference = stats.seeds_needed(size, sd, alpha=alpha) if sd == sd else math.nan
        need = max(n for n in (equivalence, difference, 2.0) if n == n)
        hours = need * variants * per_run / max(1, jobs) / 3600 if math.isfinite(need) else math.inf
        rows.append({"comparison": f"{method} vs {against}", "metric": metric, "pilot seeds": seen,
                     "paired sd": sd, "margin": margin if margin is not None else math.nan, "effect": size, "seeds: equivalence": equivalence,
                     "seeds: difference": difference, "hours": hours if sd == sd else math.nan})
    return pd.DataFrame(rows)


def fmt_seeds(n: float) -> str:
    return "–" if n != n else "> 1000" if math.isinf(n) else f"{int(n)}"


def plan_text(path: str, pilot: str, effect: float | None = None, jobs: int = 1) -> str:
    """What `moe-harness plan` prints."""
    if effect is not None and not 0 < effect < math.inf:
        raise ValueError(f"--effect = {effect!r} must be a difference > 0 in the metric's units (e.g. 0.02)")
    if jobs < 1:
        raise ValueError(f"--jobs = {jobs!r} must be a whole number >= 1")
    suite = load_suite(path)
    if not comparisons(suite):
        raise ValueError(f"{path}: the suite makes no comparison to plan for: give it primary = [\"METHOD vs "
                         "baseline\", \"METHOD vs front\", \"METHOD vs OTHER\"], a second variant, or a front")
    rows = plan_rows(suite, pilot_runs(Path(pilot)), effect, jobs)
    variants = len({cfg.variant for cfg in suite.runs if cfg.seed == suite.runs[0].seed})
    alpha = plan_alpha(suite)
    which = (f"the primary ones, each test planned at alpha {alpha:.3g} (0.05 over Holm's {tests_of(suite)} tests)"
             if suite.primary else "no primary declared: every comparison of the suite, each at alpha 0.05")
    lines = [f"{suite.name}: {len(rows)} comparison(s) ({which}); {variants} runs per seed; paired spread from "
             f"{pilot}; seeds for 80 % power; hours: the whole suite at that many seeds, at the pilot's time per "
             f"run, over {jobs} worker(s)"]
    for r in rows.to_dict("records"):
        if r["paired sd"] != r["paired sd"]:
            lines.append(f"  {r['comparison']}: the pilot has no paired seeds for it ({r['pilot seeds']}); run a pilot "
                         "of these variants first")
            continue
        parts = [f"equivalence within ±{r['margin']:g}: {fmt_seeds(r['seeds: equivalence'])} seeds"] \
            if r["margin"] == r["margin"] else []
        parts.append(f"a difference of {r['effect']:g}: {fmt_seeds(r['seeds: difference'])} seeds")
        cost = "never" if math.isinf(r["hours"]) else f"{r['hours']:.1f} h"
        lines.append(f"  {r['comparison']} ({r['metric']}, paired sd {r['paired sd']:.4f} over {r['pilot seeds']} "
                     f"pilot seeds): {'; '.join(parts)}; the suite at the larger costs {cost}")
    return "\n".join(lines)
