"""Suite files: a TOML file expanded into validated run configs (variants x grid x seeds).

A suite file:

    name = "smoke"
    seeds = [0, 1]
    [base]                      # any run-config key, for every run
    size = "tiny"
    "train.steps" = 400         # quote dotted keys ([base.train] tables work too)
    [[variants]]                # one entry per arm; `label` defaults to the router name
    router = "loss_free"
    "router.bias_rate" = 1e-2   # quoted: `router` itself is the preset name
    [grid]                      # optional: every combination of these values, for every variant
    "train.lr" = [1e-3, 3e-3]

plus the answers it asks for: `baseline`, `front` (reference families, analysis/verdicts.py),
`equivalence_margin`, `primary` (the pre-registered comparisons, Holm over exactly those:
"smebu vs loss_free", "smebu vs front", "a vs b"), `require_settled` (withhold verdicts on runs
whose balance is still moving) and sequential `seeds = { min, max, ... }` (analysis/sequential.py).
Every run is resolved, and so checked, before any starts; runner.py executes them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import metric_registry
from harness.analysis import sequential
from harness.engine.config import RunConfig
from harness.suites.keys import resolve
from harness.engine.train import corpus_for
from harness.suites import specfile
from harness.suites.specfile import flatten, read_toml

SUITE_KEYS = {"name", "description", "seeds", "plugins", "base", "variants", "grid", "baseline", "front",
              "equivalence_margin", "correction", "primary", "require_settled"}
CORRECTIONS = ("holm", "none")  # for the many comparisons of a suite's verdicts (analysis/verdicts.py)



@dataclass
class Suite:
    name: str
    runs: list[RunConfig]
    source: Path
    baseline: str = ""  # the label the report compares every variant with (default: the first variant)
    front: list[str] = field(default_factory=list)  # the variants of the reference families' runs (verdicts.py)
    margins: dict[str, float] = field(default_factory=dict)  # metric -> equivalence margin (TOST)
    plan: sequential.Plan | None = None  # seeds = { min, max, ... }: seeds added while unresolved
    front_family: dict[str, str] = field(default_factory=dict)  # such a variant -> its family's name
    correction: str = "holm"  # the verdicts' correction for many comparisons: holm or none
    points: dict[str, str] = field(default_factory=dict)  # variant -> its [grid] point ("key=value,..."; "" without)
    primary: list[str] = field(default_factory=list)  # the pre-registered comparisons ("a vs b"), Holm over these
    require_settled: bool = False  # withhold a verdict that involves a run whose balance has not settled


def expand_suite(spec: dict[str, Any], overrides: dict[str, Any], source: Path) -> Suite:
    specfile.check_keys(spec, SUITE_KEYS, source, "suite")
    specfile.load_plugins(spec, source)
    name = specfile.name_of(spec, source)
    plan = sequential.plan_of(spec["seeds"], source) if isinstance(spec.get("seeds"), dict) else None
    seeds = list(range(plan.max)) if plan else specfile.seeds_of(spec, source)
    variants, (front, family_of) = spec.get("variants"), front_variants(spec.get("front"), source)
    if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
        raise ValueError(f"{source}: variants = {variants!r}: a suite needs at least one [[variants]] table, "
                         'e.g. [[variants]] router = "loss_free"')
    variants = variants + front
    labels = [v.get("label", v.get("router", "softmax_topk")) for v in variants]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise ValueError(f"{source}: variant label(s) {duplicated} appear more than once; give each [[variants]] "
                         "its own `label` so their runs are not averaged together")
    base = specfile.table_of(spec, "base", source)
    grid = grid_of(spec, source)
    specfile.no_seed_in({"--set": overrides, "[base]": base, "[grid]": grid,
                         **{f"[[variants]] {label!r}": flatten(v) for label, v in zip(labels, variants)}}, source)
    labelled = expand_runs(variants, grid, seeds, base, overrides)
    runs = [cfg for _, cfg in labelled]
    points = {cfg.variant: cfg.variant[len(label) + 1:-1] if cfg.variant != label else "" for label, cfg in labelled}
    baseline = spec.get("baseline", labels[0])
    variant_names = sorted({r.variant for r in runs})
    if baseline not in labels and baseline not in variant_names:
        raise ValueError(f"{source}: baseline = {baseline!r} is not a variant of this suite; choose one of "
                         f"{sorted(set(labels) | set(variant_names))}")
    # NOTE: by label, so a family's runs are its own at every point of a [grid] too
    front_family = {cfg.variant: family_of[label] for label, cfg in labelled if label in family_of}
    margins = margins_of(spec, source)
    asked = [("seeds.metric", plan.metric)] if plan else []
    for what, metric in asked + [("equivalence_margin", m) for m in margins]:
        check_recorded(what, metric, runs, source)
    primary = primary_of(spec.get("primary", []), labels, baseline, set(family_of.values()), set(family_of), source)
    return Suite(name, runs, source, baseline, sorted(front_family), margins, plan, front_family,
                 *error_control(spec, source), points, primary, settled_rule(spec, source))


def error_control(spec: dict[str, Any], source: Path) -> tuple[str]:
    correction = spec.get("correction", "holm")
    if correction not in CORRECTIONS:
        raise ValueError(f"{source}: correction = {correction!r}; choose one of {list(CORRECTIONS)} (holm: the "
                         "primary comparisons' tests are Holm-adjusted as one set)")
    return (correction,)


def settled_rule(spec: dict[str, Any], source: Path) -> bool:
    settled = spec.get("require_settled", False)
    if not isinstance(settled, bool):
        raise ValueError(f"{source}: require_settled = {settled!r} must be true or false (true: a verdict that involves "
                         "a run whose MaxVio_batch is still trending is withheld)")
    return settled


PRIMARY_FORMS = ('"METHOD vs baseline" (or the baseline\'s label), "METHOD vs front" (or a front\'s name), or '
                 '"METHOD vs OTHER" (a pair of variants)')


def primary_of(value: Any, labels: list[str], baseline: str, fronts: set[str], front_members: set[str],
               source: Path) -> list[str]:
    """`primary = ["smebu vs loss_free", "smebu vs front"]`: the comparisons the suite pre-registers,
    each one it makes; ValueError naming the entry and what is allowed."""
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        raise ValueError(f"{source}: primary = {value!r} must be a list of comparisons, each {PRIMARY_FORMS}")
    methods = [label for label in labels if label not in front_members]
    out = []
    for entry in value:
        a, sep, b = (part.strip() for part in entry.partition(" vs "))
        where = f"{source}: primary entry {entry!r}"
        if not sep or not a or not b:
            raise ValueError(f"{where} must be {PRIMARY_FORMS}")
        if a not in labels:
            raise ValueError(f"{where}: {a!r} is not a variant of this suite; choose one of {methods}")
        targets = {"baseline", baseline, *labels} | ({"front", *fronts} if fronts else set())
        if b not in targets:
            raise ValueError(f"{where}: {b!r} is not a comparison this suite makes; compare with 'baseline' "
                             f"({baseline!r}), {'a front ' + str(sorted({'front', *fronts})) + ', ' if fronts else ''}"
                             f"or another variant of {methods}")
        if a == b or (a == baseline and b == "baseline") or (a in front_members and b in {"front", *fronts}):
            raise ValueError(f"{where} compares {a!r} with itself (or a front member with its front): a comparison "
                             "this suite does not make")
        if entry in out:
            raise ValueError(f"{where} is listed twice")
        out.append(f"{a} vs {b}")
    return out


def check_recorded(what: str, metric: str, runs: list[RunConfig], source: Path) -> None:
    """A metric of a numbered series of columns (ep{N}_efficiency, drop_frac_cf{N}) that some run does not
    record (N not among its metrics.ep_sizes or capacity_factors, or not dividing its experts)
    would make the verdicts on it fail after training, or vanish: refused before any run starts."""
    if metric in metric_registry.METRICS:
        return
    for cfg in runs:
        columns = cfg.metrics.series_columns(cfg.model.num_experts)
        if metric not in columns:
            raise ValueError(f"{source}: {what} names {metric!r}, which the runs of variant {cfg.variant!r} do not "
                             f"record (metrics.ep_sizes = {cfg.metrics.ep_sizes}, metrics.capacity_factors = "
                             f"{cfg.metrics.capacity_factors}, model.num_experts = {cfg.model.num_experts}); they "
                             f"record {columns} of that kind, or use a plain metric such as val_loss, maxvio_global")


def expand_runs(variants: list[dict], grid: dict[str, list], seeds: list[int], base: dict[str, Any],
                overrides: dict[str, Any]) -> list[tuple[str, RunConfig]]:
    """(label, resolved run) for every variant x grid point x seed; a grid point's runs are named
    `label[key=value,...]`."""
    out = []
    for variant in variants:
        variant = flatten(variant)
        label = variant.pop("label", variant.get("router", "softmax_topk"))
        for combo in itertools.product(*grid.values()):
            point = dict(zip(grid, combo))
            suffix = ",".join(f"{k}={v}" for k, v in point.items())
            for seed in seeds:
                settings = {**base, **variant, **point, **overrides,
                            "variant": f"{label}[{suffix}]" if suffix else label, "seed": seed}
                out.append((label, resolve(settings)))
    return out


def grid_of(spec: dict[str, Any], source: Path) -> dict[str, list]:
    """`[grid]`: key = [values], every combination run for every variant."""
    grid = spec.get("grid", {})
    if not isinstance(grid, dict):
        raise ValueError(f"{source}: grid = {grid!r} must be a table of key = [values] ([grid])")
    grid = flatten(grid)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{source}: grid key {key!r} must map to a non-empty list, got {values!r}")
    return grid


def front_variants(front: Any, source: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """`front = { router = "sigmoid_topk_aux", key = "router.aux_alpha", values = [...] }`: one
    variant per value, the reference family the report measures other methods against. A list of
    such tables gives several families, each with a `name`; any other key of a table is a
    run-config setting of its family (`"router.aux_scope" = "sequence"`). Returns the variants and
    each one's family name."""
    if front is None:
        return [], {}
    example = ('{ router = "sigmoid_topk_aux", key = "router.aux_alpha", values = [1e-3, 1e-2, 1e-1] }, or a list '
               'of such tables each with its own name = "..."')
    families = front if isinstance(front, list) else [front]
    names = [f.get("name", "front") if isinstance(f, dict) else None for f in families]
    if len(families) > 1 and (not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in families)
                              or len(set(names)) < len(names)):
        raise ValueError(f"{source}: front lists {len(families)} families: give each its own name = \"...\"; "
                         f"got names {names}")
    variants, family_of = [], {}
    for family, name in zip(families, names):
        if (not isinstance(family, dict) or not {"router", "key", "values"} <= set(family)
                or not isinstance(family["values"], list) or len(family["values"]) < 2
                or not isinstance(family["key"], str)):
            raise ValueError(f"{source}: front = {family!r} must be {{ router = PRESET, key = RUN-CONFIG KEY, values = "
                             f"[at least 2 values] }}, e.g. {example}")
        fixed = {k: v for k, v in flatten(family).items() if k not in {"router", "key", "values", "name"}}
        short = family["key"].rpartition(".")[2]
        labels = [f"{name} {short}={v:g}" if isinstance(v, (int, float)) else f"{name} {short}={v}"
                  for v in family["values"]]
        twice = [v for i, (v, label) in enumerate(zip(family["values"], labels))
                 if labels.count(label) > 1 and labels.index(label) == i]
        if twice:
            raise ValueError(f"{source}: front {name!r}: values = {family['values']!r} lists {twice} more than once "
                             "(as printed); each value is one member of the front: list each once")
        for value, label in zip(family["values"], labels):
            variants.append({**fixed, "router": family["router"], family["key"]: value, "label": label})
            family_of[label] = name
    return variants, family_of


def margins_of(spec: dict[str, Any], source: Path) -> dict[str, float]:
    """`equivalence_margin = { val_loss = 0.01 }`: per metric, the margin of the TOST verdicts."""
    margins = spec.get("equivalence_margin", {})
    if not isinstance(margins, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in margins.values()):
        raise ValueError(f"{source}: equivalence_margin = {margins!r} must map metric names to margins > 0, "
                         "e.g. { val_loss = 0.01 }")
    unknown = sorted(m for m in margins if metric_registry.get_metric(m) is None)
    if unknown:
        raise ValueError(f"{source}: equivalence_margin names unknown metric(s) {unknown}; e.g. val_loss, "
                         "maxvio_global")
    return {m: float(v) for m, v in margins.items()}


def load_suite(path: str | Path, overrides: dict[str, Any] | None = None) -> Suite:
    """Read and validate a suite file; every run is resolved (and so checked) before any starts."""
    suite = expand_suite(read_toml(path), overrides or {}, Path(path))
    check_data(suite.runs)
    return suite


def check_data(runs: list[RunConfig]) -> None:
    """Load each distinct corpus once, so a missing file or a too-small vocab fails up front."""
    for cfg in runs:
        corpus_for(cfg)
