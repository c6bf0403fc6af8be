"""Optuna sweeps: a trial is a run (or a few seeds of one) with a sampled config.

A sweep file:

    name = "sweep_bias_rate"
    n_trials = 24                 # trials one `moe-harness sweep` process adds (--n-trials)
    seeds = [0]                   # each trial is the mean over these seeds
    [base]                        # the fixed run config: any key a suite accepts
    router = "loss_free"
    [objective]
    metrics = ["val_loss"]        # one metric, or two for a Pareto front
    constraint = { metric = "maxvio_global", max = 0.3 }   # optional, single objective
    pruner = "median"             # median | hyperband | none (single objective; default none with a constraint)
    [space]                       # the scientific / nuisance parameters to search
    "router.bias_rate" = { type = "float", low = 1e-5, high = 1e-1, log = true }
    "router.bias_update" = { type = "categorical", choices = ["sign", "rms", "linear"] }

Every trial's runs go into the runs/, steps/ and loads/ tables (with `trial`), written when
the trial ends; trials.parquet lists the study's trials with the mean metrics each stored in
the study. The study lives in Optuna storage (SQLite in the output folder by default), so
rerunning adds trials and several workers can share one study; on an RDB storage a dead
worker's trial is failed after its heartbeat stops and retried (storage.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from harness import tables
from harness.engine.config import TrainConfig
from harness.suites.keys import parse_overrides, resolve
from harness.errors import RunsFailed
from harness.suites.runner import run_or_fail
from harness.analysis.report.sweep import best_trial
from harness.metric_registry import summary_columns
from harness.suites.storage import HEARTBEAT_S, close_storage, heartbeat_enabled, open_storage
from harness.suites.workqueue import POLL_S, WORKER

from harness.suites.sweepfile import Sweep, load_sweep


def spec_of(sweep: Sweep) -> dict[str, Any]:
    """What makes trials of a study comparable: stored in the study, checked on every later start."""
    return json.loads(json.dumps({"base": sweep.base, "space": [dataclasses.asdict(p) for p in sweep.space],
                                  "metrics": sweep.metrics, "constraint": sweep.constraint, "seeds": sweep.seeds},
                                 sort_keys=True, default=str))


def check_same_sweep(study: optuna.Study, sweep: Sweep) -> None:
    stored, spec = study.user_attrs.get("sweep_spec"), spec_of(sweep)
    if stored is None:
        study.set_user_attr("sweep_spec", spec)
        return
    if stored != spec:
        changed = [k for k in spec if stored.get(k) != spec[k]]
        if "base" in changed:
            keys = sorted(k for k in set(stored["base"]) | set(spec["base"]) if stored["base"].get(k) != spec["base"].get(k))
            changed[changed.index("base")] = f"base ({', '.join(keys)})"
        raise ValueError(f"study {study.study_name!r} was started with another sweep: {', '.join(changed)} changed. "
                         "Its trials would be ranked with these; pass --study-name NEW for a new study, or restore "
                         "the settings")


def make_study(sweep: Sweep, storage) -> optuna.Study:
    # NOTE: Optuna >= 5 reads constraints that the trial set itself; older ones need this function
    legacy = sweep.constraint and not hasattr(optuna.trial.Trial, "set_constraint")
    constraints = (lambda t: t.user_attrs.get("constraint", [0.0])) if legacy else None
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(constraints_func=constraints, multivariate=True),
        "random": lambda: optuna.samplers.RandomSampler(),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(constraints_func=constraints),
    }
    train = TrainConfig(**{k.removeprefix("train."): v for k, v in sweep.base.items() if k.startswith("train.")})
    steps, every = train.steps, train.eval_every or train.steps
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=every, max_resource=steps),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    study = optuna.create_study(study_name=sweep.study_name, storage=storage, load_if_exists=True,
                                directions=sweep.directions, sampler=samplers[sweep.sampler](),
                                pruner=pruners[sweep.pruner]())
    check_same_sweep(study, sweep)
    return study


class Objective:
    """Suggest, build the config, run each seed, record, report and prune: nothing else."""

    def __init__(self, sweep: Sweep, folder: Path, progress: bool):
        self.sweep, self.folder, self.progress = sweep, folder, progress

    def __call__(self, trial: optuna.Trial):
        sweep = self.sweep
        trial.set_user_attr("worker", WORKER)
        params = {p.key: p.suggest(trial) for p in sweep.space}
        results = []
        try:
            for i, seed in enumerate(sweep.seeds):
                cfg = resolve({**sweep.base, **params, "seed": seed, "variant": trial_label(trial.number, params)})
                on_eval = self.pruning_callback(trial) if i == 0 and sweep.pruner != "none" else None
                result = run_or_fail(cfg, self.progress, on_eval=on_eval, log_dir=self.folder / "logs",
                                     group=sweep.study_name)
                result.record.update(suite=sweep.name, trial=trial.number)
                results.append(result)
                if result.record["status"] != "ok":
                    break
        finally:  # NOTE: written when the trial ends, so a killed worker leaves no partial trial behind
            for result in results:
                tables.append_run(self.folder, result, key=f"{result.record['run_id']}_t{trial.number}")
        records = [r.record for r in results]
        status = records[-1]["status"]
        trial.set_user_attr("status", status)
        trial.set_user_attr("num_seeds", len(records))
        if status == "pruned":
            raise optuna.TrialPruned()
        if status != "ok":  # failed or diverged: recorded in the tables; Optuna marks it FAIL
            return [math.nan] * len(sweep.metrics) if len(sweep.metrics) > 1 else math.nan
        means = {m: sum(r.get(m, math.nan) for r in records) / len(records)
                 for m in set(summary_columns()) | set(sweep.metrics) | self.constraint_metric}
        for metric, value in means.items():  # NOTE: in the study, so every worker's trials.parquet is complete
            trial.set_user_attr(metric, value)
        if sweep.constraint:
            excess = means[sweep.constraint["metric"]] - sweep.constraint["max"]  # feasible when <= 0
            trial.set_user_attr("constraint", [excess])
            trial.set_user_attr("constraint_metric", sweep.constraint["metric"])
            trial.set_user_attr("constraint_max", float(sweep.constraint["max"]))
            if hasattr(trial, "set_constraint"):
                trial.set_constraint(sweep.constraint["metric"], excess)
        values = [means[m] for m in sweep.metrics]
        return values if len(values) > 1 else values[0]

    @property
    def constraint_metric(self) -> set[str]:
        return {self.sweep.constraint["metric"]} if self.sweep.constraint else set()

    @staticmethod
    def pruning_callback(trial: optuna.Trial):
        def on_eval(step: int, val_loss: float) -> bool:
            trial.report(val_loss, step)
            return trial.should_prune()

        return on_eval


def trial_label(number: int, params: dict[str, Any]) -> str:
    """`trial 3 (bias_rate=0.0055, bias_update=rms)`: the trial's number and its sampled values."""
    def short(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    return f"trial {number} (" + ", ".join(f"{k.rpartition('.')[2]}={short(v)}" for k, v in params.items()) + ")"


def trials_table(study: optuna.Study, sweep: Sweep) -> pd.DataFrame:
    """The study's trials: params, state, objective values and the mean metrics each trial stored.

    Everything comes from the study, so every worker's copy lists every trial's metrics whichever
    folder the runs went to; a trial that did not complete has no metrics.
    """
    trials = study.trials_dataframe(attrs=("number", "state", "params", "values", "user_attrs", "duration"))
    if trials.empty:
        return trials
    trials = trials.rename(columns={"number": "trial"})
    params = [c for c in trials.columns if c.startswith("params_")]
    trials["label"] = [trial_label(n, {c.removeprefix("params_"): row[c] for c in params if pd.notna(row[c])})
                       for n, (_, row) in zip(trials["trial"], trials.iterrows())]
    if "values" in trials:
        trials = trials.rename(columns={"values": f"objective_{sweep.metrics[0]}"})
    trials = trials.rename(columns={f"values_{i}": f"objective_{m}" for i, m in enumerate(sweep.metrics)})
    trials.columns = [c.removeprefix("params_").removeprefix("user_attrs_") for c in trials.columns]
    trials["duration"] = trials["duration"].dt.total_seconds() if "duration" in trials else math.nan
    complete = trials["state"] == "COMPLETE"
    for metric in [m for m in summary_columns() if m in trials]:
        trials.loc[~complete, metric] = math.nan
    return trials


def write_trials(study: optuna.Study, sweep: Sweep, folder: Path) -> pd.DataFrame:
    frame = trials_table(study, sweep)
    if len(frame):
        tables.write_parquet_atomic(folder / "trials.parquet", frame.astype({"state": str}))
    return frame


def print_best(study: optuna.Study, sweep: Sweep, trials: pd.DataFrame) -> None:
    """The best feasible trial (the report's rule, analysis/report/sweep.py), or a two-objective front."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    print(f"\n{sweep.name}: {len(study.trials)} trials in the study, {len(done)} complete")
    if not done:
        return
    if len(sweep.metrics) == 1:
        best = best_trial(trials)
        if best is None:
            closest = min(done, key=lambda t: t.user_attrs["constraint"][0])
            print(f"  no trial meets {sweep.constraint['metric']} <= {sweep.constraint['max']}; closest: trial "
                  f"{closest.number}, {sweep.constraint['metric']} over by {closest.user_attrs['constraint'][0]:.4f}"
                  f"  {closest.params}")
            return
        number = int(best["trial"])
        print(f"  best trial {number}: {sweep.metrics[0]} = {best[f'objective_{sweep.metrics[0]}']:.4f}  "
              f"{study.trials[number].params}")
        return
    print(f"  Pareto front ({', '.join(sweep.metrics)}):")
    for t in sorted(study.best_trials, key=lambda t: t.values[0]):
        print(f"  trial {t.number}: " + ", ".join(f"{v:.4f}" for v in t.values) + f"  {t.params}")


def run_sweep(sweep: Sweep, out_dir: str | Path = "results", storage: str | None = None,
              n_trials: int | None = None, progress: bool = True, heartbeat_s: int = HEARTBEAT_S) -> Path:
    folder = Path(out_dir) / sweep.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {out_dir!r}: cannot write the results folder {folder} ({err.strerror})") from err
    # NOTE: runs record their own failures; Optuna's warnings would print a Ctrl-C as a traceback
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = open_storage(storage, folder / "study.db", heartbeat_s)
    try:
        study = make_study(sweep, store)
        objective = Objective(sweep, folder, progress=False)
        callbacks = [lambda study, trial: write_trials(study, sweep, folder)]
        study.optimize(objective, n_trials=n_trials or sweep.n_trials, catch=(Exception,),
                       show_progress_bar=progress, callbacks=callbacks)
        finish_in_flight(study, objective, callbacks)
        print_best(study, sweep, write_trials(study, sweep, folder))
        failed = [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("status") == "failed"]
    finally:
        close_storage(store)
    if failed:
        raise RunsFailed(f"trial(s) {failed} had a run that failed (see the error column of the runs table); "
                         "the study went on without them")
    return folder


def finish_in_flight(study: optuna.Study, objective, callbacks) -> None:
    """Before leaving, wait for trials other workers are running, and retry any whose worker died."""
    storage = study._storage  # NOTE: Optuna has no public getter; fail_stale_trials reads it the same way
    if not heartbeat_enabled(storage):
        return
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)
        elif study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            time.sleep(POLL_S)
        else:
            return


def run_sweep_file(path: str, out_dir: str = "results", storage: str | None = None, n_trials: int | None = None,
                   device: str = "auto", overrides: list[str] | None = None, progress: bool = True,
                   heartbeat_s: int = HEARTBEAT_S, study_name: str | None = None) -> Path:
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"--n-trials = {n_trials} must be a positive integer")
    settings = parse_overrides(overrides or [])
    if device != "auto":
        settings["train.device"] = device
    sweep = load_sweep(path, settings)
    if study_name:
        sweep.study_name = study_name
    return run_sweep(sweep, out_dir, storage, n_trials, progress, heartbeat_s)
