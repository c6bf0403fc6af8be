"""The command line as a user runs it: output, exit status, and one-paragraph errors."""

import subprocess
import sys

import pytest

from harness.cli import main
from harness.routing import describe, router_names


def test_list_prints_every_preset_with_its_description(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == router_names()
    for line, name in zip(lines, router_names()):
        assert describe(name) and line.endswith(describe(name))


def test_console_script_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "harness.cli", "list"], capture_output=True, text=True, check=True)
    assert "loss_free" in out.stdout and "dynamic_k" in out.stdout


def test_a_suite_logs_live_to_tensorboard_under_its_folder(make_suite, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    suite = make_suite([{"router": "loss_free"}, {"router": "softmax_topk"}])
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--set", 'train.log_to=["tensorboard"]']) == 0
    capsys.readouterr()
    logs = sorted((tmp_path / "out" / "tiny" / "logs" / "tensorboard").iterdir())
    assert [p.name.split("-s0-")[0] for p in logs] == ["loss_free", "softmax_topk"]
    events = EventAccumulator(str(logs[0])).Reload()
    assert "val/maxvio_global" in events.Tags()["scalars"]


def test_deterministic_algorithms_on_request_keep_the_run_ids_and_the_numbers(make_suite, tmp_path, monkeypatch,
                                                                               capsys):
    """MOE_HARNESS_DETERMINISTIC=1 (for CUDA's atomics) changes how runs compute, not what: on CPU
    every preset's row is as without it, under the same run id, and the row says it was on."""
    import torch

    from harness import tables

    suite = make_suite([{"router": r} for r in ("loss_free", "dynamic_k", "quantile_balancing", "expert_threshold")])
    assert main(["run", str(suite), "--out", str(tmp_path / "plain")]) == 0
    monkeypatch.setenv("MOE_HARNESS_DETERMINISTIC", "1")
    try:
        assert main(["run", str(suite), "--out", str(tmp_path / "det")]) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    plain, det = (tables.read(tmp_path / d / "tiny").sort_values("run_id").reset_index(drop=True)
                  for d in ("plain", "det"))
    assert list(det["run_id"]) == list(plain["run_id"])
    assert det["deterministic"].all() and not plain["deterministic"].any()
    for column in ("val_loss", "maxvio_global", "train_loss"):
        assert (det[column] == plain[column]).all(), column
    monkeypatch.setenv("MOE_HARNESS_DETERMINISTIC", "yes")
    assert main(["run", str(suite), "--out", str(tmp_path / "bad")]) == 2
    assert "use 1 (deterministic algorithms) or 0" in capsys.readouterr().err
