"""The many-machines recipe (issue 36, item 3): experiments/cluster/ starts N identical workers of one
suite on one storage, as a Slurm job array (slurm_array.sbatch) or SkyPilot nodes (skypilot.yaml),
each running experiments/cluster/worker.sh. Here the recipe's own files run as the scheduler would
run them (several processes, one local storage; `srun` a shim that runs its command) and every
run of the suite is done exactly once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml

from harness import tables
from harness.suites import workqueue
from harness.suites.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "experiments" / "cluster"
RUNS = [{"router": "softmax_topk"}, {"router": "loss_free"}, {"router": "sigmoid_topk_aux"}]
SHORT = {"train.steps": 20, "train.eval_every": 10}

pytestmark = pytest.mark.slow  # NOTE: several worker processes


def environment(tmp_path: Path, suite: Path, storage: str, **extra) -> dict:
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    srun = shim / "srun"  # NOTE: Slurm's srun runs the command in the task's allocation; here, in place
    srun.write_text('#!/usr/bin/env bash\nwhile [[ "${1:-}" == --* ]]; do shift; done\nexec "$@"\n')
    srun.chmod(0o755)
    return {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "SUITE": str(suite),
            "OUT": str(tmp_path / "shared"), "MOE_HARNESS_STORAGE": storage, "OMP_NUM_THREADS": "1", **extra}


def start_all(commands: list[tuple[list[str], dict]]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd, env in commands]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def assert_every_run_done_once(tmp_path: Path, suite: Path, storage: str, workers: list) -> None:
    for worker in workers:
        assert worker.returncode == 0, worker.stderr[-3000:]
    runs = tables.read(tmp_path / "shared" / "tiny", "runs")
    expected = load_suite(suite).runs
    assert sorted(runs["run_id"]) == sorted(r.run_id for r in expected) and set(runs["status"]) == {"ok"}
    study = optuna.load_study(study_name=workqueue.queue_name(load_suite(suite)), storage=storage)
    complete = [t.user_attrs["run_id"] for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(runs["run_id"])  # no run done twice, none left over


def test_a_slurm_array_of_workers_does_every_run_once(make_suite, tmp_path):
    suite = make_suite(RUNS, seeds=(0, 1), base=SHORT)
    storage = f"sqlite:///{tmp_path / 'queue.db'}"
    script = (CLUSTER / "slurm_array.sbatch").read_text()
    assert "#SBATCH --array=" in script and "worker.sh" in script
    tasks = [(["bash", str(CLUSTER / "slurm_array.sbatch")],
              environment(tmp_path, suite, storage, SLURM_ARRAY_TASK_ID=str(i), SLURM_SUBMIT_DIR=str(ROOT)))
             for i in range(3)]
    workers = start_all(tasks)
    assert_every_run_done_once(tmp_path, suite, storage, workers)
    assert all(f"moe-harness worker {i} on" in w.stderr for i, w in enumerate(workers))


def test_skypilot_nodes_run_the_same_worker_and_do_every_run_once(make_suite, tmp_path):
    task = yaml.safe_load((CLUSTER / "skypilot.yaml").read_text())
    assert task["num_nodes"] >= 2 and "MOE_HARNESS_STORAGE" in task["secrets"]
    suite = make_suite(RUNS, seeds=(0,), base=SHORT)
    storage = f"sqlite:///{tmp_path / 'queue.db'}"
    nodes = [(["bash", "-c", task["run"]],
              environment(tmp_path, suite, storage, SKYPILOT_NODE_RANK=str(rank)))
             for rank in range(2)]
    assert_every_run_done_once(tmp_path, suite, storage, start_all(nodes))


def test_a_worker_without_its_storage_stops_naming_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MOE_HARNESS_STORAGE"}
    done = subprocess.run(["bash", str(CLUSTER / "worker.sh")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**env, "SUITE": "experiments/smoke.toml", "OUT": str(tmp_path)})
    assert done.returncode != 0 and "MOE_HARNESS_STORAGE" in done.stderr and not any(tmp_path.iterdir())
