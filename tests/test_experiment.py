"""Suites end to end: tables and columns, resume, interruption, divergence, bad input."""

import math

import pandas as pd

from harness import tables
import pytest

from harness.suites import runner as experiment
from harness.suites import suite as suite_mod
from harness.suites.specfile import read_toml
from harness.cli import main
from harness.errors import RunsFailed

RUN_COLUMNS = {
    "run_id", "suite", "variant", "router", "seed", "status", "train_loss", "val_loss", "maxvio_global",
    "maxvio_global_worst", "maxvio_batch", "mean_k", "tokens_per_s", "wall_s", "device", "torch_version",
    "git_commit", "router.bias_rate", "train.lr", "model.num_experts", "data_sha256", "val_bpb", "peak_mem_mb",
}
STEP_COLUMNS = {"run_id", "step", "tokens", "train_loss", "aux_loss", "lr", "maxvio_batch", "mean_k",
                "tokens_per_s", "val_loss", "maxvio_global"}
LOAD_COLUMNS = {"run_id", "step", "layer", "expert", "scope", "load"}
TWO_VARIANTS = [{"router": "softmax_topk"}, {"router": "loss_free", "router.bias_rate": 0.01}]


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tiny_suite_writes_the_documented_tables(make_suite, tmp_path, capsys):
    suite = make_suite(TWO_VARIANTS, seeds=(0, 1))
    code, out, _ = run_cli(["run", str(suite), "--out", str(tmp_path / "out")], capsys)
    assert code == 0
    folder = tmp_path / "out" / "tiny"
    runs = tables.read(folder, "runs")
    steps = tables.read(folder, "steps")
    loads = tables.read(folder, "loads")
    assert RUN_COLUMNS <= set(runs.columns), RUN_COLUMNS - set(runs.columns)
    assert STEP_COLUMNS <= set(steps.columns) and LOAD_COLUMNS <= set(loads.columns)
    assert len(runs) == 4 and set(runs["status"]) == {"ok"} and runs["run_id"].is_unique
    assert set(runs["suite"]) == {"tiny"}
    assert (folder / "suite.toml").is_file() and len(list((folder / "resolved").glob("*.json"))) == 1
    assert {p.name for p in (folder / "runs").iterdir()} == {f"{r}.parquet" for r in runs["run_id"]}
    # every run has its step rows, and evaluation steps carry val_loss
    assert set(steps["run_id"]) == set(runs["run_id"])
    assert steps.dropna(subset=["val_loss"])["step"].tolist().count(6) == 4
    # loads are fractions that sum to 1 per (run, step, layer, scope)
    sums = loads.groupby(["run_id", "step", "layer", "scope"])["load"].sum()
    assert sums.between(0.999, 1.001).all() and {"batch", "global"} <= set(loads["scope"])
    domains = {s for s in loads["scope"] if s not in ("batch", "global")}  # the final evaluation, per domain
    assert domains and all(s.startswith("domain:") for s in domains)
    assert runs["maxvio_global"].between(0, 7).all() and (runs["mean_k"] == 2).all()
    assert "softmax_topk" in out and "loss_free" in out and "maxvio_global" in out


def test_rerun_adds_no_rows(make_suite, tmp_path, capsys):
    suite = make_suite(TWO_VARIANTS)
    args = ["run", str(suite), "--out", str(tmp_path)]
    run_cli(args, capsys)
    before = {t: tables.read(tmp_path / "tiny", t) for t in ("runs", "steps", "loads")}
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "tiny").rglob("*.parquet")}
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "2 of 2 runs already complete" in out
    for table, frame in before.items():
        pd.testing.assert_frame_equal(tables.read(tmp_path / "tiny", table), frame)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "tiny").rglob("*.parquet")} == mtimes  # nothing rewritten


def test_interrupted_suite_completes_on_rerun_with_each_run_once(make_suite, tmp_path, monkeypatch, capsys):
    suite = make_suite(TWO_VARIANTS + [{"router": "dynamic_k", "router.bias_rate": 0.01}])
    real_run, calls = experiment.run, []

    def crash_on_second(cfg, **kwargs):
        calls.append(cfg.variant)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the second run
        return real_run(cfg, **kwargs)

    monkeypatch.setattr(experiment, "run", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_suite_file(str(suite), out_dir=str(tmp_path), progress=False)
    first = tables.read(tmp_path / "tiny", "runs")
    assert first["variant"].tolist() == ["softmax_topk"]
    monkeypatch.setattr(experiment, "run", real_run)
    experiment.run_suite_file(str(suite), out_dir=str(tmp_path), progress=False)
    runs = tables.read(tmp_path / "tiny", "runs")
    steps = tables.read(tmp_path / "tiny", "steps")
    assert sorted(runs["variant"]) == ["dynamic_k", "loss_free", "softmax_topk"] and runs["run_id"].is_unique
    assert (steps.groupby("run_id")["step"].apply(lambda s: s.is_unique)).all()


def test_a_failing_run_is_recorded_reported_exits_1_and_is_retried(make_suite, tmp_path, monkeypatch, capsys):
    suite = make_suite(TWO_VARIANTS)
    real_run = experiment.run

    def broken_loss_free(cfg, **kwargs):
        if cfg.router == "loss_free":
            raise RuntimeError("out of memory (simulated)")
        return real_run(cfg, **kwargs)

    monkeypatch.setattr(experiment, "run", broken_loss_free)
    code, out, err = run_cli(["run", str(suite), "--out", str(tmp_path)], capsys)  # the others still run
    assert code == 1 and "1 of 2 runs failed (loss_free)" in err and "Traceback" not in err and "simulated" in out
    assert main(["report", str(tmp_path / "tiny")]) == 0
    assert "Runs that did not finish: loss_free (seed 0): failed" in (tmp_path / "tiny" / "report.md").read_text()
    with pytest.raises(RunsFailed, match="1 of 2 runs failed"):
        experiment.run_suite_file(str(suite), out_dir=str(tmp_path), progress=False)
    runs = tables.read(tmp_path / "tiny", "runs").set_index("variant")
    assert runs.loc["loss_free", "status"] == "failed" and "simulated" in runs.loc["loss_free", "error"]
    monkeypatch.setattr(experiment, "run", real_run)
    experiment.run_suite_file(str(suite), out_dir=str(tmp_path), progress=False)
    runs = tables.read(tmp_path / "tiny", "runs")
    assert sorted(runs["status"]) == ["ok", "ok"] and len(runs) == 2


def test_diverging_run_is_recorded_and_the_next_proceeds(make_suite, tmp_path):
    suite = make_suite([{"router": "softmax_topk", "label": "exploding", "train.lr": 1e6, "train.grad_clip": 0.0,
                         "train.warmup_steps": 1},
                        {"router": "loss_free"}], base={"train.steps": 20})
    experiment.run_suite_file(str(suite), out_dir=str(tmp_path), progress=False)
    runs = tables.read(tmp_path / "tiny", "runs").set_index("variant")
    assert runs.loc["exploding", "status"] == "diverged" and math.isnan(runs.loc["exploding", "val_loss"])
    assert runs.loc["loss_free", "status"] == "ok"


def test_grid_and_seeds_expand_into_labelled_runs(make_suite):
    suite = make_suite([{"router": "loss_free"}], seeds=(0, 1), extra='[grid]\n"router.bias_rate" = [0.001, 0.01]\n')
    runs = suite_mod.load_suite(suite).runs
    assert len(runs) == 4 and len({r.run_id for r in runs}) == 4
    assert {r.variant for r in runs} == {"loss_free[router.bias_rate=0.001]", "loss_free[router.bias_rate=0.01]"}


@pytest.mark.parametrize("variant, extra_args, message", [
    ({"router": "lossfree"}, [], "unknown router 'lossfree'; registered routers: .*loss_free"),
    ({"router": "loss_free", "router.bias_lr": 0.1}, [], "unknown key 'router.bias_lr'; allowed keys: .*router.bias_rate"),
    ({"router": "loss_free", "model.top_k": 9}, [], r"model.top_k = 9 must be <= model.num_experts = 8"),
    ({"router": "loss_free"}, ["--set", "train.steps=many"], "train.steps expects a value of type int, got 'many'"),
    ({"router": "loss_free"}, ["--set", "router.bias_update=abs"], r"router.bias_update = 'abs' is not allowed"),
    ({"router": "loss_free"}, ["--set", "data.source=/nonexistent/*.txt"], "data.source = '/nonexistent/\\*.txt': no such file"),
    ({"router": "loss_free"}, ["--set", "steps"], "--set 'steps' must look like KEY=VALUE"),
])
def test_bad_input_exits_2_with_a_named_error(make_suite, tmp_path, capsys, variant, extra_args, message):
    import re

    suite = make_suite([variant])
    code, _, err = run_cli(["run", str(suite), "--out", str(tmp_path)] + extra_args, capsys)
    assert code == 2 and "Traceback" not in err
    assert re.search(message, err), err
    assert "\n" not in err.strip()  # one paragraph


def test_missing_suite_file_and_bad_suite_keys(tmp_path, capsys):
    code, _, err = run_cli(["run", str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and "file not found" in err and "nope.toml" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nvariant = []\n')
    code, _, err = run_cli(["run", str(bad)], capsys)
    assert code == 2 and "unknown suite key(s) ['variant']" in err and "variants" in err


def test_a_failed_rerun_does_not_lose_existing_tables(make_suite, tmp_path, capsys):
    suite = make_suite(TWO_VARIANTS)
    run_cli(["run", str(suite), "--out", str(tmp_path)], capsys)
    before = tables.read(tmp_path / "tiny", "runs")
    code, _, _ = run_cli(["run", str(suite), "--out", str(tmp_path), "--set", "router=nope"], capsys)
    assert code == 2
    pd.testing.assert_frame_equal(tables.read(tmp_path / "tiny", "runs"), before)


@pytest.mark.parametrize("name", ["smoke", "ablation", "gpu_paper"])
def test_shipped_suites_resolve(name):
    from pathlib import Path

    path = Path(__file__).parent.parent / "experiments" / f"{name}.toml"
    suite = suite_mod.expand_suite(read_toml(path), {"train.device": "cpu"}, path)
    assert len(suite.runs) >= 5 and len({r.run_id for r in suite.runs}) == len(suite.runs)


def test_result_files_get_the_umask_mode_not_a_private_one(make_suite, tmp_path):
    import os
    import stat

    from harness.cli import main

    old = os.umask(0o022)
    try:
        suite = make_suite([{"router": "loss_free"}], base={"train.checkpoint_every": 3, "train.keep_checkpoint": True})
        assert main(["run", str(suite), "--out", str(tmp_path), "--no-progress"]) == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "tiny").rglob("*") if p.is_file()]
    assert {p.parent.name for p in files} >= {"runs", "steps", "loads", "resolved", "checkpoints", "tiny"}
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes  # readable by colleagues and workers of other users
