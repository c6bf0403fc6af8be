"""Seeds that stop when the answer is known: a group-sequential design with alpha spending.

    seeds = { min = 3, max = 12, step = 3, until = "resolved", metric = "val_loss" }   # alpha = 0.05

The suite runs `min` seeds (0, 1, ...) of every variant, then adds `step` seeds at a time, only to
the comparisons with the baseline that are still unresolved, up to `max`. The looks are planned:
n_1 = min, n_2 = min + step, ..., the last one max. Stopping on the data would inflate false
findings if each look used the fixed design's 95 % interval (simulate() shows by how much), so
look j spends only part of alpha,

    alpha_j = alpha (f(n_j / max) - f(n_{j-1} / max)),  f(t) = t^2

(the power spending family of Kim & DeMets 1987 with rho = 2: little at the first looks, more at
the last), and judges the paired differences d_1..d_n (variant minus baseline, seed by seed):

    different    the (1 - alpha_j) t-interval of the mean excludes 0
    equivalent   with a margin m for the metric (`equivalence_margin`): the (1 - 2 alpha_j)
                 t-interval lies inside (-m, m), i.e. both one-sided tests reject at alpha_j (TOST)
    continue     otherwise; at the last look the comparison ends unresolved

The union bound over the looks gives P(a false "different" at any look) <= sum_j alpha_j = alpha
whatever the dependence between looks, and the same for a false "equivalent" when the true
difference is at least the margin. It holds where the t-interval does (near-normal seed-to-seed
differences). The price is a wider interval at each look than a fixed design's; simulate()
measures both the error rates and the seeds saved.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from harness import metric_registry
from harness.analysis import stats

KEYS = {"min", "max", "step", "until", "metric", "alpha"}
# NOTE: every seed up to `max` is resolved (and so checked) before any run starts; a design that has
# not resolved by this many seeds will not, and a larger max would only stall the start
MAX_SEEDS = 256


@dataclass(frozen=True)
class Plan:
    min: int
    max: int
    step: int
    metric: str = "val_loss"
    alpha: float = 0.05

    def looks(self) -> list[int]:
        """The planned seed counts, the last one `max`."""
        return sorted(set(range(self.min, self.max, self.step)) | {self.max})

    def alpha_at(self, n: int) -> float:
        """The alpha spent at the look with n seeds."""
        looks = self.looks()
        j = looks.index(n)
        before = looks[j - 1] if j else 0
        return self.alpha * ((n / self.max) ** 2 - (before / self.max) ** 2)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(**json.loads(text))


def plan_of(value: Any, source: Path) -> Plan:
    """The `seeds = { ... }` table of a suite, validated."""
    example = '{ min = 3, max = 12, step = 3, until = "resolved", metric = "val_loss" }'
    unknown = sorted(set(value) - KEYS)
    if unknown:
        raise ValueError(f"{source}: seeds has unknown key(s) {unknown}; allowed: {sorted(KEYS)}, e.g. {example}")
    ints = {k: value.get(k) for k in ("min", "max", "step")}
    ints["step"] = ints["step"] if ints["step"] is not None else 1
    bad = [k for k, v in ints.items() if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        raise ValueError(f"{source}: seeds.{bad[0]} = {value.get(bad[0])!r} must be a whole number; e.g. {example}")
    if not 2 <= ints["min"] <= ints["max"] or ints["step"] < 1:
        raise ValueError(f"{source}: seeds = {value!r} needs 2 <= min <= max and step >= 1 (a paired interval "
                         f"needs 2 seeds); e.g. {example}")
    if ints["max"] > MAX_SEEDS:
        raise ValueError(f"{source}: seeds.max = {ints['max']} is more seeds than a sequential design can use; "
                         f"allowed: at most {MAX_SEEDS} (every seed's runs are resolved before the first starts)")
    if value.get("until", "resolved") != "resolved":
        raise ValueError(f"{source}: seeds.until = {value['until']!r}; allowed: 'resolved'")
    metric = value.get("metric", "val_loss")
    if not isinstance(metric, str) or metric_registry.get_metric(metric) is None:
        raise ValueError(f"{source}: seeds.metric = {metric!r} is not a recorded metric; e.g. val_loss, maxvio_global")
    alpha = value.get("alpha", 0.05)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 0.5:
        raise ValueError(f"{source}: seeds.alpha = {alpha!r} must be a number in (0, 0.5)")
    return Plan(ints["min"], ints["max"], ints["step"], metric, float(alpha))


interval = stats.t_interval  # (mean, low, high) of the paired differences at a look's level


def judge(d: np.ndarray, alpha: float, margin: float | None) -> str:
    """'different', 'equivalent' or 'continue' at one look that spends `alpha` (module docstring)."""
    _, low, high = interval(d, 1 - alpha)
    if low > 0 or high < 0:
        return "different"
    if margin is not None:
        _, low, high = interval(d, 1 - 2 * alpha)
        if -margin < low and high < margin:
            return "equivalent"
    return "continue"


def replay(d: np.ndarray, plan: Plan, margin: float | None) -> dict:
    """The design's course on paired differences in seed order: the verdict, the seeds it used and why."""
    d = np.asarray(d, dtype=float)
    for j, n in enumerate(plan.looks(), start=1):
        if len(d) < n:
            return {"verdict": "running", "seeds": len(d), "next": n,
                    "reason": f"look {j} needs {n} seeds, {len(d)} done"}
        verdict = judge(d[:n], plan.alpha_at(n), margin)
        if verdict != "continue":
            shown = f"equivalent within ±{margin:g}" if verdict == "equivalent" else verdict
            return {"verdict": shown, "seeds": n, "next": n,
                    "reason": f"{shown} at look {j} ({n} seeds, alpha spent {plan.alpha_at(n):.3g})"}
    return {"verdict": "unresolved", "seeds": plan.max, "next": plan.max,
            "reason": f"reached max = {plan.max} seeds without a verdict"}


def paired_in_order(per_seed: pd.DataFrame, group: str, base: str, metric: str = "") -> tuple[np.ndarray, str]:
    """The paired differences group - base over consecutive seeds 0, 1, ... while both have them,
    and their scale (log ratios for a log-scale metric, stats.paired)."""
    if group not in per_seed or base not in per_seed:
        return np.zeros(0), "plain"
    d, scale = stats.paired(per_seed, group, base, metric)
    seeds = [s for s in range(len(d)) if s in d.index]  # NOTE: a gap (a failed seed) ends the series
    seeds = seeds[:next((i for i, s in enumerate(seeds) if s != i), len(seeds))]
    return d.loc[seeds].to_numpy(float), scale


def decisions(runs: pd.DataFrame, plan: Plan, bases: dict[str, str], margins: dict[str, float]) -> pd.DataFrame:
    """Per group compared with a baseline (`bases`, stats.baseline_groups of `runs`): the design's
    verdict on `plan.metric`, the seeds used, the seeds its next look needs, and why it stopped."""
    table = stats.per_seed(runs, plan.metric)
    rows = []
    for group, base in bases.items():
        if group == base:
            continue
        d, scale = paired_in_order(table, group, base, plan.metric)
        margin = margins.get(plan.metric)
        course = replay(d, plan, math.log1p(margin) if margin is not None and scale == "log" else margin)
        mean, low, high = interval(d[:course["seeds"]], 0.95) if course["seeds"] >= 2 else (math.nan,) * 3
        rows.append({"kind": "sequential", "variant": group, "against": base, "metric": plan.metric, "scale": scale,
                     "margin": margins.get(plan.metric, math.nan), "n": course["seeds"], "diff": mean,
                     "low95": low, "high95": high, **course})
    return pd.DataFrame(rows)


def recorded_plan(runs: pd.DataFrame) -> Plan | None:
    """The suite's sequential plan, as its runs recorded it (None for a fixed list of seeds)."""
    if "seed_plan" not in runs:
        return None
    stored = runs["seed_plan"].dropna()
    stored = stored[stored != ""]
    return Plan.from_json(stored.iloc[0]) if len(stored) else None


def simulate(effect: float, plan: Plan, margin: float | None, sims: int = 4000, seed: int = 0) -> dict:
    """Simulated seed sequences with paired differences ~ Normal(effect, 1) (effect and margin in
    units of the seed-to-seed sd): the share of each verdict, the mean seeds used, and for
    comparison the false-'different' share of two fixed rules, the full `max`-seed design with
    its 95 % interval and naive peeking (the 95 % interval at every look)."""
    rng = np.random.default_rng(seed)
    draws = rng.normal(effect, 1.0, size=(sims, plan.max))
    verdicts, used, peek, fixed = [], [], 0, 0
    for d in draws:
        course = replay(d, plan, margin)
        verdicts.append(course["verdict"].split(" ")[0])
        used.append(course["seeds"])
        peek += any(judge(d[:n], 0.05, None) == "different" for n in plan.looks())
        fixed += judge(d, 0.05, None) == "different"
    verdicts = pd.Series(verdicts)
    return {"effect": effect, "margin": margin, "sims": sims,
            "different": float((verdicts == "different").mean()),
            "equivalent": float((verdicts == "equivalent").mean()),
            "unresolved": float((verdicts == "unresolved").mean()),
            "mean_seeds": float(np.mean(used)), "fixed_seeds": plan.max,
            "fixed_different": fixed / sims, "peeking_different": peek / sims}
