"""Sweep files: a TOML file read into a validated Sweep (the fixed base, the space to search, the
objective), every value the sampler can draw checked before the study starts. sweep.py runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from harness.suites.keys import coerce, resolve
from harness.metric_registry import objectives
from harness.suites import specfile
from harness.suites.specfile import read_toml
from harness.suites.suite import check_data

SWEEP_KEYS = {"name", "description", "n_trials", "seeds", "plugins", "base", "objective", "space"}
OBJECTIVE_KEYS = {"metrics", "constraint", "pruner", "sampler"}
PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random", "nsga2")


@dataclass
class Param:
    key: str
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list = field(default_factory=list)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.key, self.choices)


@dataclass
class Sweep:
    name: str
    base: dict[str, Any]
    space: list[Param]
    metrics: list[str]
    seeds: list[int]
    n_trials: int
    pruner: str
    sampler: str
    constraint: dict | None
    source: Path
    study_name: str = ""  # the Optuna study (default: the sweep's name)

    def __post_init__(self) -> None:
        self.study_name = self.study_name or self.name

    @property
    def directions(self) -> list[str]:
        return [objectives()[m] for m in self.metrics]


def parse_param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
        raise ValueError(f"{where}: space key {key!r} needs a table with type = 'float', 'int' or 'categorical', got {spec!r}")
    unknown = sorted(set(spec) - {"type", "low", "high", "log", "choices"})
    if unknown:
        raise ValueError(f"{where}: space key {key!r} has unknown field(s) {unknown}; allowed: type, low, high, log, choices")
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: space key {key!r} needs a non-empty list `choices`")
        for choice in choices:
            coerce(key, choice)  # names an unknown key or a bad choice
        return Param(key, "categorical", choices=choices)
    low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise ValueError(f"{where}: space key {key!r} needs numbers `low` and `high`, got low={low!r}, high={high!r}")
    if not low < high:
        raise ValueError(f"{where}: space key {key!r} has an empty or inverted range: low={low!r} must be < high={high!r}")
    if log and low <= 0:
        raise ValueError(f"{where}: space key {key!r} is log scale, so low must be > 0; got low={low!r}")
    coerce(key, low if spec["type"] == "float" else int(low))
    return Param(key, spec["type"], low, high, log)


def parse_objective(spec: dict, where: str) -> tuple[list[str], dict | None, str, str]:
    unknown = sorted(set(spec) - OBJECTIVE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown [objective] key(s) {unknown}; allowed: {sorted(OBJECTIVE_KEYS)}")
    metrics, allowed = spec.get("metrics", ["val_loss"]), objectives()
    if not isinstance(metrics, list) or not 1 <= len(metrics) <= 2 or any(m not in allowed for m in metrics):
        raise ValueError(f"{where}: objective.metrics = {metrics!r} must list one or two of {list(allowed)}")
    constraint = spec.get("constraint")
    if constraint is not None and (not isinstance(constraint, dict) or constraint.get("metric") not in allowed
                                   or not isinstance(constraint.get("max"), (int, float))):
        raise ValueError(f"{where}: objective.constraint = {constraint!r} must be {{ metric = one of "
                         f"{list(allowed)}, max = a number }}")
    # NOTE: pruning compares intermediate loss only; with a balance constraint it would cut the
    # balanced trials, whose loss is a little higher early on. So the default is then 'none'.
    pruner = spec.get("pruner", "median" if len(metrics) == 1 and constraint is None else "none")
    if pruner not in PRUNERS:
        raise ValueError(f"{where}: objective.pruner = {pruner!r}; choose one of {list(PRUNERS)}")
    if pruner != "none" and len(metrics) > 1:
        raise ValueError(f"{where}: objective.pruner = {pruner!r} needs a single objective (Optuna cannot prune "
                         "multi-objective trials); use pruner = 'none'")
    sampler = spec.get("sampler", "tpe" if len(metrics) == 1 else "nsga2")
    if sampler not in SAMPLERS:
        raise ValueError(f"{where}: objective.sampler = {sampler!r}; choose one of {list(SAMPLERS)}")
    return metrics, constraint, pruner, sampler


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> Sweep:
    """Read and validate a sweep file; the base config and one sampled point are resolved up front."""
    path = Path(path)
    spec = read_toml(path)
    specfile.check_keys(spec, SWEEP_KEYS, path, "sweep")
    specfile.load_plugins(spec, path)
    space = [parse_param(k, v, str(path)) for k, v in (spec.get("space") or {}).items()]
    if not space:
        raise ValueError(f"{path}: [space] is empty; give at least one key, e.g. "
                         "\"router.bias_rate\" = { type = \"float\", low = 1e-5, high = 1e-1, log = true }")
    metrics, constraint, pruner, sampler = parse_objective(spec.get("objective", {}), str(path))
    seeds = specfile.seeds_of(spec, path)
    n_trials = spec.get("n_trials", 20)
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ValueError(f"{path}: n_trials = {n_trials!r} must be a positive integer")
    base = specfile.table_of(spec, "base", path)
    specfile.no_seed_in({"--set": overrides or {}, "[base]": base, "[space]": {p.key: p for p in space}}, path)
    base = {**base, **(overrides or {})}
    check_space(base, space, path)
    name = specfile.name_of(spec, path)
    return Sweep(name, base, space, metrics, seeds, n_trials, pruner, sampler,
                 constraint, path)


def check_space(base: dict[str, Any], space: list[Param], path: Path) -> None:
    """Resolve the run config at both ends of every range and at every categorical choice (the
    others at their first value), so no value the sampler can draw fails mid-study."""
    first = {p.key: p.choices[0] if p.type == "categorical" else p.low for p in space}
    try:  # NOTE: a fault of [base] that no [space] value mends is named as such, not blamed on the first key
        resolve(base)
    except ValueError as err:
        try:
            resolve({**base, **first})
        except ValueError as again:
            if str(again) == str(err):
                raise ValueError(f"{path}: [base] (with any --set): {err}") from None
    for param in space:
        values = param.choices if param.type == "categorical" else [param.low, param.high]
        for value in values:
            value = int(value) if param.type == "int" else value
            try:
                cfg = resolve({**base, **first, param.key: value})
            except ValueError as err:
                raise ValueError(f"{path}: [space] {param.key!r} can sample {value!r}, which is not allowed: {err}") \
                    from err
            check_data([cfg])  # a bad data file, or a seq_len the data cannot hold, fails before any trial
