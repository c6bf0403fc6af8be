"""Optuna sweeps as a user runs them: tables, resume, two workers, bad spaces, divergence."""

import subprocess
import sys

import optuna
import pandas as pd

from harness import tables
import pytest

from harness.suites import sweep as sweep_mod
from harness.cli import main
from tests.conftest import TINY_BASE, toml_value


def write_sweep(path, space, objective='metrics = ["val_loss"]\npruner = "none"', base=None, name="tiny_sweep"):
    base = {**TINY_BASE, "router": "loss_free", **(base or {})}
    lines = [f'name = "{name}"', "n_trials = 4", "seeds = [0]", "[base]"]
    lines += [f'"{k}" = {toml_value(v)}' for k, v in base.items()]
    lines += ["[objective]", objective, "[space]", space]
    path.write_text("\n".join(lines) + "\n")
    return path


RATE_SPACE = ('"router.bias_rate" = { type = "float", low = 1e-4, high = 1e-1, log = true }\n'
              '"router.bias_update" = { type = "categorical", choices = ["sign", "rms", "linear"] }')


def test_four_trials_write_trials_table_with_sampled_params(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.toml", RATE_SPACE)
    assert main(["sweep", str(path), "--out", str(tmp_path)]) == 0
    trials = pd.read_parquet(tmp_path / "tiny_sweep" / "trials.parquet")
    assert len(trials) == 4 and set(trials["state"]) == {"COMPLETE"}
    assert trials["router.bias_rate"].between(1e-4, 1e-1).all()
    assert set(trials["router.bias_update"]) <= {"sign", "rms", "linear"}
    assert trials["objective_val_loss"].tolist() == trials["val_loss"].tolist()
    runs = tables.read(tmp_path / "tiny_sweep", "runs")
    assert sorted(runs["trial"]) == [0, 1, 2, 3]
    assert runs.set_index("trial")["router.bias_rate"].to_dict() == trials.set_index("trial")["router.bias_rate"].to_dict()
    assert "best trial" in capsys.readouterr().out


def test_second_invocation_adds_trials_to_the_same_study(tmp_path):
    path = write_sweep(tmp_path / "s.toml", RATE_SPACE)
    main(["sweep", str(path), "--out", str(tmp_path), "--n-trials", "2"])
    main(["sweep", str(path), "--out", str(tmp_path), "--n-trials", "2"])
    trials = pd.read_parquet(tmp_path / "tiny_sweep" / "trials.parquet")
    assert trials["trial"].tolist() == [0, 1, 2, 3]
    assert len(tables.read(tmp_path / "tiny_sweep", "runs")) == 4


@pytest.mark.slow
def test_two_workers_share_one_storage(tmp_path):
    path = write_sweep(tmp_path / "s.toml", RATE_SPACE)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(path), "--out", str(tmp_path), "--storage", storage,
           "--n-trials", "3"]
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="tiny_sweep", storage=storage)
    assert len(study.trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    runs = tables.read(tmp_path / "tiny_sweep", "runs")
    assert sorted(runs["trial"]) == list(range(6)) and runs["run_id"].is_unique
    assert len(pd.read_parquet(tmp_path / "tiny_sweep" / "trials.parquet")) == 6


def test_two_objectives_give_a_pareto_front(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.toml", RATE_SPACE, objective='metrics = ["val_loss", "maxvio_global"]')
    assert main(["sweep", str(path), "--out", str(tmp_path), "--n-trials", "3"]) == 0
    assert "Pareto front (val_loss, maxvio_global)" in capsys.readouterr().out
    trials = pd.read_parquet(tmp_path / "tiny_sweep" / "trials.parquet")
    assert {"objective_val_loss", "objective_maxvio_global"} <= set(trials.columns)


def test_balance_constraint_is_recorded(tmp_path):
    objective = 'metrics = ["val_loss"]\npruner = "none"\nconstraint = { metric = "maxvio_global", max = 0.5 }'
    path = write_sweep(tmp_path / "s.toml", RATE_SPACE, objective=objective)
    main(["sweep", str(path), "--out", str(tmp_path), "--n-trials", "2"])
    trials = pd.read_parquet(tmp_path / "tiny_sweep" / "trials.parquet")
    for excess, vio in zip(trials["constraint"], trials["maxvio_global"]):
        assert excess[0] == pytest.approx(vio - 0.5)


def test_diverged_trial_is_recorded_and_the_study_continues(tmp_path):
    space = '"train.lr" = { type = "categorical", choices = [1e6, 1e-3] }'
    path = write_sweep(tmp_path / "s.toml", space, base={"train.grad_clip": 0.0, "train.steps": 20})
    sweep = sweep_mod.load_sweep(path)
    storage = f"sqlite:///{tmp_path / 'd.db'}"
    study = optuna.create_study(study_name="tiny_sweep", storage=storage)
    study.enqueue_trial({"train.lr": 1e6})
    study.enqueue_trial({"train.lr": 1e-3})
    sweep_mod.run_sweep(sweep, tmp_path, storage=storage, n_trials=2, progress=False)
    trials = pd.read_parquet(tmp_path / "tiny_sweep" / "trials.parquet").set_index("trial")
    assert trials.loc[0, "state"] == "FAIL" and trials.loc[0, "status"] == "diverged"
    assert trials.loc[1, "state"] == "COMPLETE"
    runs = tables.read(tmp_path / "tiny_sweep", "runs").set_index("trial")
    assert runs.loc[0, "status"] == "diverged" and runs.loc[1, "status"] == "ok"


def test_pruned_trials_keep_their_partial_run(tmp_path):
    objective = 'metrics = ["val_loss"]\npruner = "median"'
    path = write_sweep(tmp_path / "s.toml", '"train.lr" = { type = "float", low = 1e-5, high = 1e-2, log = true }',
                       objective=objective, base={"train.steps": 12, "train.eval_every": 3})
    sweep = sweep_mod.load_sweep(path)
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    study = optuna.create_study(study_name="tiny_sweep", storage=storage)
    for lr in (1e-2, 1e-2, 1e-2, 1e-5):  # the last is far worse than the median at its first evaluation
        study.enqueue_trial({"train.lr": lr})
    sweep_mod.run_sweep(sweep, tmp_path, storage=storage, n_trials=4, progress=False)
    trials = pd.read_parquet(tmp_path / "tiny_sweep" / "trials.parquet").set_index("trial")
    assert trials.loc[3, "state"] == "PRUNED"
    runs = tables.read(tmp_path / "tiny_sweep", "runs").set_index("trial")
    assert runs.loc[3, "status"] == "pruned" and runs.loc[3, "steps_done"] < 12


@pytest.mark.parametrize("space, message", [
    ('"router.bias_rate" = { type = "float", low = 0.1, high = 0.01 }', "empty or inverted range: low=0.1 must be < high=0.01"),
    ('"router.bias_rate" = { type = "float", low = 0.1, high = 0.1 }', "empty or inverted range"),
    ('"router.bias_rate" = { type = "float", low = 0.0, high = 0.1, log = true }', "log scale, so low must be > 0"),
    ('"router.bias_lr" = { type = "float", low = 1e-4, high = 0.1 }', "unknown key 'router.bias_lr'; allowed keys: .*router.bias_rate"),
    ('"router.bias_update" = { type = "categorical", choices = ["sign", "abs"] }', "router.bias_update = 'abs' is not allowed"),
    ('"router.bias_rate" = { type = "uniform", low = 0.0, high = 0.1 }', "type = 'float', 'int' or 'categorical'"),
    ('', r"\[space\] is empty"),
])
def test_bad_search_space_exits_2_with_a_named_error(tmp_path, capsys, space, message):
    import re

    path = write_sweep(tmp_path / "s.toml", space)
    assert main(["sweep", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert not (tmp_path / "tiny_sweep" / "study.db").exists()


def test_pruner_with_two_objectives_is_rejected(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.toml", RATE_SPACE, objective='metrics = ["val_loss", "maxvio_global"]\npruner = "median"')
    assert main(["sweep", str(path), "--out", str(tmp_path)]) == 2
    assert "needs a single objective" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["sweep_bias_rate", "sweep_aux_alpha", "sweep_dynamic_k"])
def test_shipped_sweeps_load(name):
    from pathlib import Path

    sweep = sweep_mod.load_sweep(Path(__file__).parent.parent / "experiments" / f"{name}.toml", {"train.device": "cpu"})
    assert sweep.space and sweep.base["size"] == "tiny"


def test_hyperband_pruner_runs(tmp_path):
    objective = 'metrics = ["val_loss"]\npruner = "hyperband"'
    path = write_sweep(tmp_path / "s.toml", '"train.lr" = { type = "float", low = 1e-4, high = 1e-2, log = true }',
                       objective=objective)
    sweep = sweep_mod.load_sweep(path)
    storage = f"sqlite:///{tmp_path / 'h.db'}"
    assert isinstance(sweep_mod.make_study(sweep, storage).pruner, optuna.pruners.HyperbandPruner)
    sweep_mod.run_sweep(sweep, tmp_path, storage=storage, n_trials=3, progress=False)
    assert len(optuna.load_study(study_name="tiny_sweep", storage=storage).trials) == 3
    assert set(pd.read_parquet(tmp_path / "tiny_sweep" / "trials.parquet")["state"]) <= {"COMPLETE", "PRUNED"}
