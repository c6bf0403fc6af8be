"""Many workers, one result: per-run files, suites and sweeps shared through an Optuna storage,
dead workers, storage URLs. Storage tests run on SQLite, and on PostgreSQL where .ci/run
started one (MOE_HARNESS_TEST_POSTGRES)."""

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from harness import tables
from harness.suites import workqueue
from harness.cli import main
from harness.suites.suite import load_suite
from harness.suites.storage import close_storage, open_storage
from tests.conftest import kill_mid_run, process_tree, wait_until
from tests.test_sweep import RATE_SPACE, write_sweep

# NOTE: worker processes, kills and PostgreSQL: in the slow set (python -m pytest -m slow), which CI runs too
pytestmark = pytest.mark.slow

FOUR_RUNS = [{"router": "softmax_topk"}, {"router": "loss_free", "router.bias_rate": 0.01}]
SLOW = {"train.steps": 40, "train.eval_every": 20}  # a few seconds a run, long enough to be killed mid-run


def cli(*args):
    return [sys.executable, "-m", "harness.cli", *map(str, args)]


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test():
    """A failed or timed-out test must not leave workers running into the next one."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    STARTED.append(proc)
    return proc


def wait_ok(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def running_on(storage_url, study_name, pid):
    """True once the worker with this pid holds a RUNNING trial of the study."""
    # NOTE: polled 5 times a second: each poll's connection is closed, or PostgreSQL runs out of clients
    storage = open_storage(storage_url, None, heartbeat_s=None)
    try:
        running = optuna.load_study(study_name=study_name, storage=storage).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    except KeyError:
        return False
    finally:
        close_storage(storage)
    return any(t.user_attrs.get("worker", "").endswith(f":{pid}") for t in running)


# -- per-run files -------------------------------------------------------------------------------

def test_each_run_is_one_file_per_table_and_export_writes_single_files(make_suite, tmp_path, capsys):
    suite = make_suite(FOUR_RUNS, seeds=(0, 1))
    assert main(["run", str(suite), "--out", str(tmp_path)]) == 0
    folder = tmp_path / "tiny"
    runs = tables.read(folder, "runs")
    for table in tables.TABLES:
        assert {p.stem for p in (folder / table).glob("*.parquet")} == set(runs["run_id"])
    capsys.readouterr()
    assert main(["export", str(folder)]) == 0
    exported = capsys.readouterr().out.split()
    assert [os.path.basename(p) for p in exported] == ["runs.parquet", "steps.parquet", "loads.parquet"]
    for table, path in zip(tables.TABLES, exported):
        pd.testing.assert_frame_equal(pd.read_parquet(path), tables.read(folder, table))


def test_readers_tolerate_columns_only_some_runs_have(tmp_path):
    from harness.engine.train import RunResult

    tables.append_run(tmp_path, RunResult({"run_id": "a", "status": "ok", "val_loss": 1.0}))
    tables.append_run(tmp_path, RunResult({"run_id": "b", "status": "ok", "val_loss": 2.0, "trial": 3}))
    (tmp_path / "runs" / ".b.parquet.123.tmp").write_bytes(b"half a file")  # a write in progress
    runs = tables.read(tmp_path, "runs").set_index("run_id")
    assert runs.loc["b", "trial"] == 3 and pd.isna(runs.loc["a", "trial"]) and len(runs) == 2
    assert tables.complete_run_ids(tmp_path) == {"a", "b"}


def test_an_old_single_file_folder_is_read_as_it_is_and_converted_only_on_request(make_suite, tmp_path, capsys):
    suite = make_suite(FOUR_RUNS)
    main(["run", str(suite), "--out", str(tmp_path)])
    folder = tmp_path / "tiny"
    before = {t: tables.read(folder, t) for t in tables.TABLES}
    for table, frame in before.items():  # rebuild the 0.1 layout
        frame.to_parquet(folder / f"{table}.parquet", index=False)
        for path in (folder / table).iterdir():
            path.unlink()
        (folder / table).rmdir()
    capsys.readouterr()
    files = sorted(folder.rglob("*"))
    for table, frame in before.items():  # read in place: nothing converted, nothing written
        assert len(tables.read(folder, table)) == len(frame)
    assert main(["report", str(folder), "--out", str(tmp_path / "report")]) == 0
    assert main(["run", str(suite), "--out", str(tmp_path)]) == 2  # runs cannot be added: it says how
    assert "run `moe-harness convert" in capsys.readouterr().err and sorted(folder.rglob("*")) == files
    assert main(["convert", str(folder)]) == 0
    assert "the old files are in" in capsys.readouterr().out
    assert main(["run", str(suite), "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "2 of 2 runs already complete" in captured.out
    assert (folder / "legacy" / "runs.parquet").is_file() and not (folder / "runs.parquet").exists()
    for table, frame in before.items():
        pd.testing.assert_frame_equal(tables.read(folder, table).sort_values(list(frame.columns[:3])).reset_index(
            drop=True), frame.sort_values(list(frame.columns[:3])).reset_index(drop=True), check_like=True)


# -- suites on many workers ----------------------------------------------------------------------

def test_two_suite_workers_killed_and_rerun_do_every_run_exactly_once(make_suite, tmp_path, storage_url):
    suite_path = make_suite(FOUR_RUNS, seeds=(0, 1), base=SLOW)
    out = tmp_path / "shared"
    cmd = cli("run", suite_path, "--out", out, "--storage", storage_url, "--heartbeat", 2, "--no-progress")
    first, second = start(cmd), start(cmd)
    study_name = workqueue.queue_name(load_suite(suite_path))
    kill_mid_run(first, lambda: running_on(storage_url, study_name, first.pid), "the first worker to claim a run")
    rerun = start(cmd)
    wait_ok(second)
    wait_ok(rerun)
    runs = tables.read(out / "tiny", "runs")
    assert len(runs) == 4 and runs["run_id"].is_unique and set(runs["status"]) == {"ok"}
    study = optuna.load_study(study_name=study_name, storage=storage_url.replace("postgresql://",
                                                                                 "postgresql+psycopg://"))
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "WAITING" not in states
    complete = [t.user_attrs["run_id"] for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(runs["run_id"])  # every run done exactly once
    assert "FAIL" in states  # the killed worker's trial, failed by heartbeat and retried
    code = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert code.returncode == 0 and len(optuna.load_study(study_name=study_name, storage=study._storage).trials) \
        == len(study.trials)  # a rerun of a finished suite does nothing


def test_jobs_starts_local_workers_on_sqlite_in_the_folder(make_suite, tmp_path, capsys):
    suite = make_suite(FOUR_RUNS, seeds=(0, 1))
    assert main(["run", str(suite), "--out", str(tmp_path), "--jobs", "2", "--no-progress"]) == 0
    runs = tables.read(tmp_path / "tiny", "runs")
    assert len(runs) == 4 and runs["run_id"].is_unique and (tmp_path / "tiny" / "queue.db").is_file()
    assert "4 runs" in capsys.readouterr().out


def _open_and_create(url, name, barrier):
    barrier.wait()
    storage = open_storage(url, None)
    optuna.create_study(study_name=name, storage=storage, load_if_exists=True)


def test_workers_starting_together_on_an_empty_database_all_open_it(storage_url):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_and_create, args=(storage_url, "race", barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]


# -- sweeps on many workers ----------------------------------------------------------------------

def test_two_sweep_workers_with_separate_folders_one_killed(tmp_path, storage_url):
    path = write_sweep(tmp_path / "s.toml", RATE_SPACE, base=SLOW)
    cmds = [cli("sweep", path, "--out", tmp_path / name, "--storage", storage_url, "--n-trials", 2,
                "--heartbeat", 2, "--no-progress") for name in ("a", "b")]
    a, b = start(cmds[0]), start(cmds[1])
    kill_mid_run(a, lambda: running_on(storage_url, "tiny_sweep", a.pid), "worker a to start a trial")
    rerun = start(cmds[0])
    wait_ok(b)
    wait_ok(rerun)
    study = optuna.load_study(study_name="tiny_sweep", storage=storage_url.replace("postgresql://",
                                                                                   "postgresql+psycopg://"))
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "WAITING" not in states and states.count("FAIL") >= 1
    done = {t.number for t in study.trials if t.state.name == "COMPLETE"}
    assert len(done) >= 4
    for name in ("a", "b"):
        trials = pd.read_parquet(tmp_path / name / "tiny_sweep" / "trials.parquet").set_index("trial")
        complete = trials[trials["state"] == "COMPLETE"]
        assert complete["val_loss"].notna().all() and complete["num_seeds"].eq(1).all()
        assert trials.loc[trials["state"] != "COMPLETE", "val_loss"].isna().all()  # no partial result
    # each trial's runs are in exactly one folder, and no folder holds a run of a killed trial
    runs = pd.concat([tables.read(tmp_path / n / "tiny_sweep", "runs") for n in ("a", "b")])
    assert set(runs["trial"]) <= {t.number for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")}
    assert runs["trial"].is_unique


# -- storage URLs and interruption ---------------------------------------------------------------

@pytest.mark.parametrize("url, message", [
    ("redis://localhost/0", "unsupported scheme 'redis'"),
    ("sqlite:////nonexistent/dir/study.db", "the folder /nonexistent/dir does not exist"),
    ("journal:/nonexistent/dir/study.log", "the folder /nonexistent/dir does not exist"),
    ("postgresql://nobody@127.0.0.1:1/db", "could not be opened"),
    ("mysql://nobody@127.0.0.1:1/db", "pip install 'moe-harness\\[mysql\\]'"),
    ("not a url", "not a storage URL"),
])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_bad_storage_exits_2_naming_the_url(make_suite, tmp_path, capsys, url, message, command):
    import importlib.util
    import re

    if "mysql" in url and importlib.util.find_spec("pymysql"):
        pytest.skip("pymysql is installed here")
    path = make_suite(FOUR_RUNS) if command == "run" else write_sweep(tmp_path / "s.toml", RATE_SPACE)
    code = main([command, str(path), "--out", str(tmp_path), "--storage", url])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and re.search(message, err), err
    assert url in err


def test_ctrl_c_ends_a_sweep_with_one_line(tmp_path):
    path = write_sweep(tmp_path / "s.toml", RATE_SPACE, base={"train.steps": 3000})
    proc = start(cli("sweep", path, "--out", tmp_path, "--no-progress"))
    wait_until(lambda: (tmp_path / "tiny_sweep" / "study.db").is_file(), what="the study")
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "Run the same command again to resume" in err


def test_ctrl_c_ends_a_worker_with_one_line_and_the_rerun_resumes(make_suite, tmp_path):
    suite = make_suite(FOUR_RUNS, seeds=(0, 1), base=SLOW)
    cmd = cli("run", suite, "--out", tmp_path, "--no-progress")
    proc = start(cmd)
    wait_until(lambda: len(list((tmp_path / "tiny" / "runs").glob("*.parquet"))) >= 1 if (
        tmp_path / "tiny" / "runs").is_dir() else False, what="the first run")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "Run the same command again to resume" in err and len(err.strip().splitlines()) == 1, err
    wait_ok(start(cmd))
    assert len(tables.read(tmp_path / "tiny", "runs")) == 4


def test_is_complete_reads_one_run_file(tmp_path):
    from harness.engine.train import RunResult

    tables.append_run(tmp_path, RunResult({"run_id": "a", "status": "ok"}))
    tables.append_run(tmp_path, RunResult({"run_id": "b", "status": "failed"}))
    assert tables.is_complete(tmp_path, "a") and not tables.is_complete(tmp_path, "b")
    assert not tables.is_complete(tmp_path, "c")


def test_a_storage_suite_and_sweep_give_their_connections_back(make_suite, tmp_path, storage_url, capsys):
    if not storage_url.startswith("postgresql"):
        pytest.skip("connection counting needs the PostgreSQL test server")
    import psycopg

    suite = make_suite([{"router": "loss_free"}])
    assert main(["run", str(suite), "--out", str(tmp_path / "a"), "--storage", storage_url]) == 0
    assert main(["sweep", str(write_sweep(tmp_path / "s.toml", RATE_SPACE)), "--out", str(tmp_path / "b"),
                 "--storage", storage_url, "--n-trials", "1"]) == 0
    capsys.readouterr()
    database = storage_url.rsplit("/", 1)[1]
    with psycopg.connect(storage_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).fetchone()[0]
    assert left == 0  # this process holds no pooled connection once the commands return


# -- passwords -----------------------------------------------------------------------------------

SECRET = "s3cret-pw"


@pytest.mark.parametrize("url", [
    f"postgresql://user:{SECRET}@127.0.0.1:1/db",
    f"postgresql+psycopg://user:{SECRET}@127.0.0.1:1/db",
    f"redis://user:{SECRET}@localhost/0",
    f"mysql://user:{SECRET}@127.0.0.1:1/db",
    f"not a url://user:{SECRET}@host",
])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_password_never_appears_in_an_error(make_suite, tmp_path, capsys, url, command):
    path = make_suite(FOUR_RUNS) if command == "run" else write_sweep(tmp_path / "s.toml", RATE_SPACE)
    code = main([command, str(path), "--out", str(tmp_path), "--storage", url])
    captured = capsys.readouterr()
    assert code == 2 and SECRET not in captured.err + captured.out, captured.err
    assert "***" in captured.err or "not a storage URL" in captured.err


def _cmdlines(pid: int) -> list[str]:
    lines = []
    for child in process_tree(pid):
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return lines


def test_local_workers_get_the_storage_through_their_environment(make_suite, tmp_path, storage_url):
    """--jobs with a password in --storage: it reaches the workers, but no worker's command line,
    no output, no result file and no study attribute holds it."""
    url = storage_url.replace("postgres@", f"postgres:{SECRET}@")  # PostgreSQL's trust login ignores it
    suite = make_suite(FOUR_RUNS)
    proc = subprocess.Popen(cli("run", suite, "--out", tmp_path, "--jobs", 2, "--storage", url, "--no-progress"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(proc)
    seen = []
    while proc.poll() is None:
        parent, *children = _cmdlines(proc.pid) or [""]
        # NOTE: a child forked but not yet exec'd still shows the parent's command line: not a worker's
        seen += [line for line in children if "harness.cli" in line and line != parent]
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert seen and all("--storage" not in line and "sqlite" not in line and SECRET not in line for line in seen)
    assert len(tables.read(tmp_path / "tiny", "runs")) == 2 and not (tmp_path / "tiny" / "queue.db").exists()
    assert SECRET not in out + err
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    storage = open_storage(storage_url, None)
    try:
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            system = storage.get_study_system_attrs(storage.get_study_id_from_name(summary.study_name))
            attrs = [study.user_attrs, system] + [(t.user_attrs, t.system_attrs) for t in study.trials]
            assert SECRET not in repr(attrs)
    finally:
        close_storage(storage)


def test_the_storage_can_come_from_the_environment(make_suite, tmp_path, monkeypatch, capsys):
    db = tmp_path / "queue-elsewhere.db"
    monkeypatch.setenv("MOE_HARNESS_STORAGE", f"sqlite:///{db}")
    assert main(["run", str(make_suite(FOUR_RUNS)), "--out", str(tmp_path), "--no-progress"]) == 0
    assert db.is_file() and len(tables.read(tmp_path / "tiny", "runs")) == 2
    study_names = [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")]
    assert any(name.startswith("suite:tiny:") for name in study_names)


def test_without_storage_drops_every_spelling_of_the_option():
    argv = ["run", "s.toml", "--storage", "u1", "--out", "o", "--storage=u2", "--stor", "u3", "--sto=u4", "--set", "x=1"]
    assert workqueue.without_storage(argv) == ["run", "s.toml", "--out", "o", "--set", "x=1"]


@pytest.mark.parametrize("visible, expected", [("2,3", ["2", "3", "2"]), (None, ["0", "1", "0"]),
                                               ("GPU-aa, GPU-bb", ["GPU-aa", "GPU-bb", "GPU-aa"])])
def test_jobs_deal_out_only_the_gpus_this_process_was_given(monkeypatch, tmp_path, capsys, visible, expected):
    """Issue 37: a parent on GPUs 2,3 put workers on GPUs 0, 1, 0. Simulated: 2 devices visible,
    --jobs 3; each worker's CUDA_VISIBLE_DEVICES is one of the parent's, and the sharing is said."""
    import torch

    started = []

    class Finished:
        returncode = 0

        def __init__(self, cmd, env):
            started.append(env["CUDA_VISIBLE_DEVICES"])

        def poll(self):
            return 0

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(subprocess, "Popen", Finished)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert workqueue.local_workers(["run", "s.toml"], 3, "sqlite:///q.db", tmp_path, set(), progress=False) == 0
    assert started == expected
    assert "--jobs 3 on 2 GPU(s): workers share them" in capsys.readouterr().err


def test_a_worker_whose_cuda_context_is_poisoned_is_started_afresh_on_its_gpu(monkeypatch, tmp_path):
    """Issue 37: after a device-side assert a worker failed every run it claimed. It now exits with
    EXIT_POISONED, and --jobs starts a fresh one on the same GPU while runs remain (simulated)."""
    import torch

    from harness.errors import EXIT_POISONED

    started = []

    class Worker:
        def __init__(self, cmd, env):
            started.append(env["CUDA_VISIBLE_DEVICES"])
            self.returncode = EXIT_POISONED if len(started) == 1 else 0

        def poll(self):
            return self.returncode

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(subprocess, "Popen", Worker)
    monkeypatch.setattr(workqueue, "POLL_S", 0.01)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert workqueue.local_workers(["run", "s.toml"], 2, "sqlite:///q.db", tmp_path, {"r1"}, progress=False) == 0
    assert started == ["2", "3", "2"]  # the poisoned worker on GPU 2, then a fresh one there
