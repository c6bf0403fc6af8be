"""Running a suite: its runs in one process, as a queue of workers, or under torchrun; resumed
after a kill; the tables written; the summary printed.

    moe-harness run SUITE.toml [--out results] [--jobs N] [--storage URL]

Outputs, in `OUT/<name>/`: runs/, steps/ and loads/ (one parquet file per run, see tables.py),
suite.toml (the file as given) and resolved/<time>_<host>_<random>.json (every run's resolved
config, one file per invocation). Runs already complete (status ok or diverged, keyed by
run_id) are skipped on a rerun; failed ones are retried. With `--storage URL` or `--jobs N`
the runs are a queue that many workers share (workqueue.py). A suite with sequential seeds
runs in rounds (analysis/sequential.py decides them).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from harness import distributed, metric_registry, tables
from harness.analysis import sequential, stats
from harness.engine.checkpoint import CheckpointMismatch
from harness.engine.config import RunConfig
from harness.suites.keys import parse_overrides
from harness.engine.train import RunResult, run
from harness.errors import DevicePoisoned, RunsFailed
from harness.suites import workqueue
from harness.suites.storage import close_storage, open_storage
from harness.suites.suite import Suite, load_suite


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per config group (label + what differs): the mean of each summary metric over seeds, and the runs."""
    ok = stats.with_groups(runs[runs["status"] == "ok"])
    columns = [c for c in metric_registry.summary_columns() if c in ok]
    table = ok.groupby("variant", sort=False)[columns].mean()
    table.insert(0, "runs", ok.groupby("variant", sort=False).size())
    return table.sort_values("maxvio_global") if "maxvio_global" in table else table


def prepare_folder(suite: Suite, out_dir: str | Path) -> Path:
    """OUT/<name>/ with the suite file as given and this invocation's resolved runs (one file each)."""
    folder = Path(out_dir) / suite.name
    if distributed.rank() > 0:
        return folder
    tables.check_appendable(folder)  # before anything is written there
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
                         "grid_point": suite.points.get(cfg.variant, ""),
                         "equivalence_margin": json.dumps(suite.margins), "correction": suite.correction,
                         "primary": json.dumps(suite.primary), "require_settled": suite.require_settled,
                         "seed_plan": suite.plan.to_json() if suite.plan else "", **result.record}
        if lead:
            tables.append_run(folder, result)
        if result.record["status"] == "failed" and device_poisoned(cfg.train.device):
            raise DevicePoisoned(f"run {cfg.run_id} ({cfg.variant}) failed with {result.record['error']} and left "
                                 "this process's CUDA context unusable; it is recorded failed. Run the same command "
                                 "again to go on in a fresh process (a --jobs worker is restarted)")
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


def device_poisoned(device: str) -> bool:
    """Whether this process's CUDA context still runs a kernel (False on CPU, or where it does)."""
    import torch

    if device == "cpu" or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return False
    try:
        torch.ones(1, device="cuda").add_(1).item()
        return False
    except RuntimeError:  # NOTE: after a device-side assert every later CUDA call raises
        return True


def run_or_fail(cfg: RunConfig, progress: bool, **kwargs):
    """A run; an exception inside it is recorded as status 'failed' and the suite goes on.

    Under torchrun the ranks agree on the outcome: a run that raised on one rank fails on every rank
    at once (distributed.failures), recorded once with the first error. A checkpoint of another
    config is bad input, not a failed run: it stops the command."""
    result, error = None, None
    try:
        result = run(cfg, progress=progress, **kwargs)
    except (KeyboardInterrupt, SystemExit, CheckpointMismatch):
        raise
    except Exception as err:  # noqa: BLE001 - one broken run must not stop a suite
        error = err
    failed = distributed.failures(error)
    if not failed:
        return result
    message = failed[0] + (f"; then on the other ranks: {'; '.join(failed[1:])}" if len(failed) > 1 else "")
    record = {"run_id": cfg.run_id, "config_id": cfg.config_id, **cfg.flat(), "status": "failed", "error": message,
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
        workqueue.local_workers(argv or [], jobs, url, folder, {r.run_id for r in suite.runs}, progress)
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
