"""Suites: expand a TOML file into runs, execute them, resume, and write the tables.

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

Outputs, in `OUT/<name>/`: runs/, steps/ and loads/ (one parquet file per run, see tables.py),
suite.toml (the file as given) and resolved/<time>_<host>_<random>.json (every run's resolved
config, one file per invocation). Runs already complete (status ok or diverged, keyed by
run_id) are skipped on a rerun; failed ones are retried. With `--storage URL` or `--jobs N`
the runs are a queue that many workers share (workqueue.py).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from harness import distributed, metric_registry, sequential, specfile, stats, tables, workqueue
from harness.checkpoint import CheckpointMismatch
from harness.errors import RunsFailed
from harness.config import RunConfig, parse_overrides, resolve
from harness.specfile import flatten, read_toml
from harness.storage import close_storage, open_storage
from harness.train import RunResult, corpus_for, run

SUITE_KEYS = {"name", "description", "seeds", "plugins", "base", "variants", "grid", "baseline", "front",
              "equivalence_margin"}


def summary_columns() -> list[str]:
    """The metrics a suite's summary prints and a sweep's trials store (the metric registry's)."""
    return [m.name for m in metric_registry.summary_metrics()]


@dataclass
class Suite:
    name: str
    runs: list[RunConfig]
    source: Path
    baseline: str = ""  # the label the report compares every variant with (default: the first variant)
    front: list[str] = field(default_factory=list)  # labels of the reference families' runs (verdicts.py)
    margins: dict[str, float] = field(default_factory=dict)  # metric -> equivalence margin (TOST)
    plan: sequential.Plan | None = None  # seeds = { min, max, ... }: seeds added while unresolved
    front_family: dict[str, str] = field(default_factory=dict)  # such a label -> its family's name


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
    runs = []
    for variant in variants:
        variant = flatten(variant)
        label = variant.pop("label", variant.get("router", "softmax_topk"))
        for combo in itertools.product(*grid.values()):
            point = dict(zip(grid, combo))
            suffix = ",".join(f"{k}={v}" for k, v in point.items())
            for seed in seeds:
                settings = {**base, **variant, **point, **overrides,
                            "variant": f"{label}[{suffix}]" if suffix else label, "seed": seed}
                runs.append(resolve(settings))
    baseline = spec.get("baseline", labels[0])
    variant_names = sorted({r.variant for r in runs})
    if baseline not in labels and baseline not in variant_names:
        raise ValueError(f"{source}: baseline = {baseline!r} is not a variant of this suite; choose one of "
                         f"{sorted(set(labels) | set(variant_names))}")
    return Suite(name, runs, source, baseline, [v["label"] for v in front], margins_of(spec, source), plan,
                 family_of)


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
        for value in family["values"]:
            label = f"{name} {short}={value:g}" if isinstance(value, (int, float)) else f"{name} {short}={value}"
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


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per config group (label + what differs): the mean of each summary metric over seeds, and the runs."""
    ok = stats.with_groups(runs[runs["status"] == "ok"])
    columns = [c for c in summary_columns() if c in ok]
    table = ok.groupby("variant", sort=False)[columns].mean()
    table.insert(0, "runs", ok.groupby("variant", sort=False).size())
    return table.sort_values("maxvio_global") if "maxvio_global" in table else table


def prepare_folder(suite: Suite, out_dir: str | Path) -> Path:
    """OUT/<name>/ with the suite file as given and this invocation's resolved runs (one file each)."""
    folder = Path(out_dir) / suite.name
    if distributed.rank() > 0:
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tables.write_text_atomic(folder / "suite.toml", suite.source.read_text())
        (folder / "resolved").mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"_{os.uname().nodename}_{uuid.uuid4().hex[:8]}"
        resolved = [{"run_id": r.run_id, **r.flat()} for r in suite.runs]
        tables.write_text_atomic(folder / "resolved" / f"{stamp}.json", json.dumps(resolved, indent=1, default=str))
    except OSError as err:
        raise ValueError(f"--out {out_dir!r}: cannot write the results folder {folder} ({err.strerror})") from err
    return folder


def execute(suite: Suite, out_dir: str | Path, progress: bool = True, storage=None) -> Path:
    """Run every run of `suite` not already complete in `out_dir/<name>/`; returns that folder.

    With `storage` (an Optuna storage), the runs are a queue shared by every worker started on it.
    With a sequential plan, in rounds: `min` seeds of every variant, then more seeds only for the
    comparisons still unresolved (sequential.py). Every worker decides the rounds from the same
    tables, so they agree, and a rerun after a kill replays the finished rounds and goes on.
    """
    folder = prepare_folder(suite, out_dir)
    if suite.plan is None:
        return execute_runs(suite, folder, progress, storage)
    want = {label: suite.plan.min for label in dict.fromkeys(r.variant for r in suite.runs)}
    while True:
        execute_runs(replace(suite, runs=[r for r in suite.runs if r.seed < want[r.variant]]), folder, progress,
                     storage)
        lead = distributed.rank() == 0
        wanted = distributed.broadcast_object(next_round(suite, folder, want) if lead else None)
        if wanted == want:
            return folder
        if lead:
            more = {label: n for label, n in wanted.items() if n != want[label]}
            print(f"{suite.name}: unresolved against {suite.baseline}, next look: "
                  + ", ".join(f"{label} to {n} seeds" for label, n in more.items()))
        want = wanted


def sequential_decisions(suite: Suite, runs: pd.DataFrame) -> pd.DataFrame:
    """The sequential design's verdict for every variant of `suite` (not the front family) against its baseline."""
    ok = stats.with_groups(runs[(runs["status"] == "ok") & ~runs["variant"].isin(suite.front)])
    if not len(ok):
        return pd.DataFrame()
    return sequential.decisions(ok, suite.plan, stats.baseline_groups(ok, suite.baseline), suite.margins)


def next_round(suite: Suite, folder: Path, want: dict[str, int]) -> dict[str, int]:
    """Seeds per variant label for the next round: an unresolved comparison moves to its next look,
    the baseline and the front family keep pace with the furthest one; unchanged when all are done."""
    runs = tables.read(folder, "runs")
    table = sequential_decisions(suite, runs[runs["run_id"].isin({r.run_id for r in suite.runs})])
    wanted = dict(want)
    for row in table.to_dict("records") if len(table) else []:
        if row["verdict"] == "running":
            label = row["variant"].split(" [", 1)[0]
            wanted[label] = max(wanted.get(label, 0), int(row["next"]))
    furthest = max(wanted.values())
    for label in wanted:
        if suite.baseline in (label, label.split("[", 1)[0]) or label in suite.front:
            wanted[label] = max(wanted[label], furthest)
    return wanted


def execute_runs(suite: Suite, folder: Path, progress: bool = True, storage=None) -> Path:
    """Run every run of `suite` not already complete in `folder` (one round of a sequential suite)."""

    lead = distributed.rank() == 0  # under torchrun every rank trains each run; rank 0 writes

    def run_one(cfg: RunConfig) -> str:
        result = run_or_fail(cfg, progress and lead, checkpoint_dir=folder / "checkpoints", log_dir=folder / "logs",
                             group=suite.name)
        result.record = {"suite": suite.name, "baseline": suite.baseline, "front": cfg.variant in suite.front,
                         "front_family": suite.front_family.get(cfg.variant, ""),
                         "equivalence_margin": json.dumps(suite.margins),
                         "seed_plan": suite.plan.to_json() if suite.plan else "", **result.record}
        if lead:
            tables.append_run(folder, result)
        return result.record["status"]

    if storage is not None:
        workqueue.work(suite, folder, storage, run_one, progress)
        return folder
    done = distributed.broadcast_object(tables.complete_run_ids(folder) if lead else None)
    todo = [r for r in suite.runs if r.run_id not in done]
    if len(todo) < len(suite.runs) and lead:
        print(f"{suite.name}: {len(suite.runs) - len(todo)} of {len(suite.runs)} runs already complete, skipping them")
    for cfg in tqdm(todo, desc=suite.name, unit="run", disable=not progress or not lead):
        run_one(cfg)
    return folder


def run_or_fail(cfg: RunConfig, progress: bool, **kwargs):
    """A run; an exception inside it is recorded as status 'failed' and the suite goes on.

    A checkpoint of another config is bad input, not a failed run: it stops the command."""
    try:
        return run(cfg, progress=progress, **kwargs)
    except (KeyboardInterrupt, SystemExit, CheckpointMismatch):
        raise
    except Exception as err:  # noqa: BLE001 - one broken run must not stop a suite
        record = {"run_id": cfg.run_id, "config_id": cfg.config_id, **cfg.flat(), "status": "failed", "error": f"{type(err).__name__}: {err}",
                  "val_loss": math.nan}
        return RunResult(record)


def run_suite_file(path: str, out_dir: str = "results", device: str = "auto",
                   overrides: list[str] | None = None, progress: bool = True, storage: str | None = None,
                   jobs: int | str = 1, argv: list[str] | None = None, heartbeat_s: int = 30,
                   dist_backend: str = "auto") -> Path:
    """The `moe-harness run` command: one process, a worker on `storage`, or `jobs` local workers."""
    settings = parse_overrides(overrides or [])
    if device != "auto":
        settings["train.device"] = device
    suite = load_suite(path, settings)
    if distributed.launched_by_torchrun():
        jobs = join_torchrun(suite, storage, jobs, dist_backend)
    jobs = workqueue.resolve_jobs(jobs, len(suite.runs), storage)
    if jobs > 1:
        folder = prepare_folder(suite, out_dir)
        url = storage or f"sqlite:///{(folder / 'queue.db').resolve()}"
        close_storage(open_storage(url, folder / "queue.db", heartbeat_s))  # a bad URL fails here, not in each worker
        workqueue.local_workers(argv or [], jobs, url, folder, {r.run_id for r in suite.runs})
    else:
        store = open_storage(storage, Path(out_dir) / suite.name / "queue.db", heartbeat_s) if storage else None
        try:
            folder = execute(suite, out_dir, progress, store)
        finally:
            close_storage(store)
    # NOTE: only rank 0 writes the tables, so only rank 0 reads them back; the other ranks are done
    # after the last collective of the last run
    if not os.environ.get("MOE_HARNESS_WORKER") and distributed.rank() == 0:  # the parent / rank 0 prints it
        report_suite(suite, folder)
    return folder


def join_torchrun(suite: Suite, storage: str | None, jobs: int | str, dist_backend: str) -> int:
    """Under torchrun: join the process group; every rank trains each run together (jobs = 1)."""
    if storage or jobs not in (1, "1", "auto"):
        raise ValueError("under torchrun every process trains each run together; --storage and --jobs share "
                         "runs between separate workers instead: use one or the other")
    devices = {r.train.device for r in suite.runs}
    if len(devices) > 1:
        raise ValueError(f"under torchrun all runs of a suite must use one device type, got {sorted(devices)}")
    distributed.init_from_env(devices.pop(), dist_backend)
    return 1


def report_suite(suite: Suite, folder: Path) -> None:
    """Print the suite's summary; RunsFailed (exit 1) if any run raised."""
    runs = tables.read(folder, "runs")
    runs = runs[runs["run_id"].isin([r.run_id for r in suite.runs])]
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(f"\n{suite.name}: {len(runs)} runs in {folder}")
        if (runs["status"] == "ok").any():
            print(summarize(runs).to_string())
        if suite.plan is not None:
            for row in sequential_decisions(suite, runs).to_dict("records"):
                print(f"  {row['variant']} vs {row['against']}: {row['reason']}")
        bad = runs[runs["status"] != "ok"]
        for _, row in bad.iterrows():
            print(f"  {row['variant']} seed {row['seed']}: {row['status']} {row.get('error', '') or ''}")
    failed = runs[runs["status"] == "failed"]
    if len(failed):
        raise RunsFailed(f"{len(failed)} of {len(suite.runs)} runs failed ({', '.join(sorted(set(failed['variant'])))}); "
                         "the others are recorded; rerun the same command to retry the failed ones")
