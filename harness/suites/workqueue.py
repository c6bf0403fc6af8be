"""Suites on many workers: a suite's runs as a queue of trials in an Optuna storage.

    moe-harness run SUITE.toml --storage URL     # start the same command on every machine or GPU
    moe-harness run SUITE.toml --jobs 4          # 4 local workers on SQLite in the results folder

The queue is an Optuna study named after the suite and its run list. Each run is one WAITING
trial (its index and run_id in the user attributes); a worker claims a trial by moving it to
RUNNING, which the storage does for exactly one worker, beats a heartbeat while the run
trains, writes the run's files and marks the trial COMPLETE (FAIL if the run raised). A
worker that dies stops beating; after the grace period the next worker that looks marks its
trial failed and enqueues it again (storage.open_storage). Enqueueing is done by one worker
only: the first to create a marker study for the queue's current length.

A worker with nothing left to claim waits while trials are RUNNING elsewhere, so that it can
take over the run of a worker that dies; it exits when nothing is waiting or running.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from harness import tables
from harness.errors import EXIT_POISONED, DevicePoisoned
from harness.suites.storage import ENV, heartbeat_enabled

POLL_S = 1.0  # how often an idle worker looks at the queue
MAX_RESTARTS = 3  # fresh workers in one slot after a CUDA context a run left unusable
FILL_TIMEOUT_S = 120  # how long a worker waits for another to finish enqueueing
WORKER = f"{os.uname().nodename}:{os.getpid()}"  # recorded on each claimed trial


def queue_name(suite) -> str:
    digest = hashlib.sha1(",".join(sorted(r.run_id for r in suite.runs)).encode()).hexdigest()[:10]
    return f"suite:{suite.name}:{digest}"


class Heartbeat:
    """Records the trial's heartbeat every interval on a daemon thread, while the run trains."""

    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True)

    def beat(self) -> None:
        interval = self.storage.get_heartbeat_interval()
        while not self.stop.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 - a lost beat is retried; the run must go on
                pass
            self.stop.wait(interval)

    def __enter__(self):
        if heartbeat_enabled(self.storage):
            self.storage.record_heartbeat(self.trial_id)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()


class SuiteQueue:
    def __init__(self, suite, folder: Path, storage):
        self.suite, self.folder, self.storage = suite, Path(folder), storage
        self.study = optuna.create_study(study_name=queue_name(suite), storage=storage, load_if_exists=True)
        self.study_id = storage.get_study_id_from_name(self.study.study_name)

    def trials(self, states=None):
        return self.study.get_trials(deepcopy=False, states=states)

    def done_run_ids(self) -> set[str]:
        finished = {t.user_attrs.get("run_id") for t in self.trials((TrialState.COMPLETE,))
                    if t.user_attrs.get("status") in tables.COMPLETE}
        return finished | tables.complete_run_ids(self.folder)

    def fill(self) -> int:
        """Enqueue the runs neither done nor queued; exactly one of the workers that call this does it."""
        self.fail_stale()
        trials = self.trials()
        if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
            return 0
        done = self.done_run_ids()
        todo = [(i, r) for i, r in enumerate(self.suite.runs) if r.run_id not in done]
        if not todo:
            return 0
        marker_name = f"{self.study.study_name}:fill:{len(trials)}"
        try:
            marker = optuna.create_study(study_name=marker_name, storage=self.storage)
        except optuna.exceptions.DuplicatedStudyError:
            self.wait_for_fill(marker_name)
            return 0
        for index, cfg in todo:
            self.study.enqueue_trial({}, user_attrs={"run": index, "run_id": cfg.run_id, "variant": cfg.variant,
                                                     "seed": cfg.seed})
        marker.set_user_attr("filled", len(todo))
        return len(todo)

    def wait_for_fill(self, marker_name: str) -> None:
        marker = optuna.load_study(study_name=marker_name, storage=self.storage)
        deadline = time.monotonic() + FILL_TIMEOUT_S
        while "filled" not in marker.user_attrs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker enqueueing {self.study.study_name} stopped before it finished; "
                                   "rerun the command")
            time.sleep(POLL_S)

    def fail_stale(self) -> None:
        if not heartbeat_enabled(self.storage):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        # NOTE: Optuna never calls a trial stale that has no heartbeat at all: one whose worker died
        # between claiming it and its first beat (it has no `worker` attribute yet). Fail those too.
        limit = datetime.timedelta(seconds=3 * self.storage.grace_period)
        for trial in self.trials((TrialState.RUNNING,)):
            started = trial.datetime_start
            if "worker" not in trial.user_attrs and started and datetime.datetime.now() - started > limit:
                trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    if self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                        getter = getattr(self.storage, "get_heartbeat_stale_trial_callback", None) or \
                            self.storage.get_failed_trial_callback  # NOTE: the name before Optuna 4.9
                        getter()(self.study, self.storage.get_trial(trial_id))

    def claim(self):
        """A WAITING trial moved to RUNNING by this worker, or None if nothing is waiting."""
        for trial in self.trials((TrialState.WAITING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            try:
                if self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    if heartbeat_enabled(self.storage):  # NOTE: at once: a trial with no beat is never stale
                        self.storage.record_heartbeat(trial_id)
                    self.storage.set_trial_user_attr(trial_id, "worker", WORKER)
                    return trial, trial_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker claimed and finished it meanwhile
        return None

    def finish(self, trial_id: int, number: int, status: str) -> None:
        try:
            self.storage.set_trial_user_attr(trial_id, "status", status)
            if status in tables.COMPLETE:
                self.study.tell(number, float(self.storage.get_trial(trial_id).user_attrs["run"]),
                                skip_if_finished=True)
            else:
                self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            # NOTE: this worker was presumed dead (a stalled heartbeat) and its trial failed and
            # requeued; the files are written, so the retry finds the run complete and only marks it
            pass


def work(suite, folder: Path, storage, run_one, progress: bool = True) -> int:
    """Take runs from the suite's queue until none is waiting or running; returns how many this worker ran.

    `run_one(cfg)` trains one run and writes its files (runner.execute_runs's loop body).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    queue = SuiteQueue(suite, folder, storage)
    added = queue.fill()
    if added:
        print(f"{suite.name}: {added} runs queued in {queue.study.study_name}")
    ran = 0
    bar = tqdm(total=len(suite.runs), desc=suite.name, unit="run", disable=not progress)
    while True:
        queue.fail_stale()
        claimed = queue.claim()
        if claimed is None:
            if not queue.trials((TrialState.RUNNING,)):
                break
            time.sleep(POLL_S)  # others are training: wait, to take over if one of them dies
            continue
        trial, trial_id = claimed
        cfg = suite.runs[trial.user_attrs["run"]]
        assert cfg.run_id == trial.user_attrs["run_id"], "the queue does not match the suite"
        status = "interrupted"
        try:
            if tables.is_complete(folder, cfg.run_id):  # its worker died after writing the files
                status = "ok"
            else:
                with Heartbeat(storage, trial_id):
                    status = run_one(cfg)
                ran += 1
                bar.update(1)
        except DevicePoisoned:  # NOTE: the run is recorded failed; this worker exits, a fresh one goes on
            status = "failed"
            raise
        finally:
            queue.finish(trial_id, trial.number, status)
    bar.close()
    return ran


def resolve_jobs(jobs: int | str, num_runs: int, storage: str | None) -> int:
    """`--jobs`: a count, or auto = one worker per GPU, on CPU one per core up to 4 (measured on 2
    cores, issue 10: two 1-thread workers finished the smoke suite in 0.75x the time of one
    2-thread process); never more workers than runs, and 1 when a --storage names a shared queue
    (start one command per machine or GPU there)."""
    import torch

    if jobs == "auto":
        if storage is not None:
            return 1
        jobs = torch.cuda.device_count() or min(os.cpu_count() or 1, 4)
        return max(1, min(jobs, num_runs))
    try:
        jobs = int(jobs)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ValueError(f"--jobs = {jobs!r} must be a whole number >= 1 or 'auto'")
    return jobs


def without_storage(argv: list[str]) -> list[str]:
    """`argv` less its --storage option (also written --storage=URL or abbreviated, as argparse allows)."""
    out, skip = [], False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif len(name) >= 4 and "--storage".startswith(name):
            skip = "=" not in arg
        else:
            out.append(arg)
    return out


def worker_gpus(jobs: int, gpus: int, visible: str | None) -> list[str]:
    """Each worker's CUDA_VISIBLE_DEVICES: the devices this process was given (its own
    CUDA_VISIBLE_DEVICES, ids or UUIDs; else 0 .. gpus - 1), dealt out in turn, so a worker never
    sees a device outside them; more workers than devices share them."""
    given = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(gpus)]
    given = given[:gpus] or [str(i) for i in range(gpus)]  # NOTE: what CUDA opened of the list
    return [given[i % len(given)] for i in range(jobs)]


def worker_envs(jobs: int, storage_url: str) -> list[dict[str, str]]:
    """Each worker's environment: one GPU each of those this process was given (worker_gpus), on CPU
    the cores split between them; the storage URL, which never goes on a command line."""
    import torch

    gpus = torch.cuda.device_count()
    devices = worker_gpus(jobs, gpus, os.environ.get("CUDA_VISIBLE_DEVICES")) if gpus else []
    if jobs > gpus > 0:
        print(f"--jobs {jobs} on {gpus} GPU(s): workers share them ({', '.join(devices)})", file=sys.stderr)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    envs = []
    for i in range(jobs):
        env = dict(os.environ, MOE_HARNESS_WORKER=str(i))
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = devices[i]
        else:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        env[ENV] = storage_url  # NOTE: any user can read a command line, not another's environment
        envs.append(env)
    return envs


def local_workers(argv: list[str], jobs: int, storage_url: str, folder: Path, run_ids: set[str],
                  progress: bool = True) -> int:
    """Start `jobs` worker processes of the same command on one storage (worker_envs), with a
    progress bar of the suite's completed runs; returns the worst exit status. A worker whose CUDA
    context a run left unusable (exit EXIT_POISONED) is started afresh in its slot while runs remain,
    up to MAX_RESTARTS times."""
    # NOTE: workers see the same argv, so a relative --out or suite path resolves the same
    cmd = [sys.executable, "-m", "harness.cli", *without_storage(argv), "--jobs", "1", "--no-progress"]
    envs = worker_envs(jobs, storage_url)
    procs, restarts = [subprocess.Popen(cmd, env=env) for env in envs], [0] * jobs
    bar = tqdm(total=len(run_ids), desc=f"{jobs} workers", unit="run", disable=not progress)
    try:
        while True:
            done = run_ids & {f.stem for f in tables.run_files(folder, "runs")}
            for i, p in enumerate(procs):
                if p.poll() == EXIT_POISONED and restarts[i] < MAX_RESTARTS and done != run_ids:
                    restarts[i] += 1
                    print(f"worker {i}: its CUDA context is unusable; starting a fresh one", file=sys.stderr)
                    procs[i] = subprocess.Popen(cmd, env=envs[i])
            if all(p.poll() is not None for p in procs):
                break
            bar.n = len(done)
            bar.refresh()
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        for p in procs:
            p.wait()
        raise
    finally:
        bar.close()
    return max(p.returncode for p in procs)
