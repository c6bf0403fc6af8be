"""`moe-harness rate` (issue 21, item 3): u* = sqrt(A / (B T)) from each run's dynamics."""

import math
import re

import pytest

from harness import tables
from harness.cli import main
from harness.engine.train import RunResult

RUNS = [  # (variant, bias_mode, u, settle_step, maxvio_batch, steps)
    ("loss_free", "loss_free", 1e-2, 100.0, 0.2, 400),
    ("loss_free", "loss_free", 1e-2, 144.0, 0.2, 400),
    ("loss_free", "loss_free", 1e-2, 121.0, 0.2, 400),
    ("quantile", "quantile", 1e-3, 50.0, 0.1, 400),  # no rate drives it (bias_travel NaN): not used
]


@pytest.fixture
def folder(tmp_path):
    for i, (variant, mode, u, settle, vio, steps) in enumerate(RUNS):
        record = {"run_id": f"r{i}", "status": "ok", "variant": variant, "router.bias_mode": mode,
                  "router.bias_rate": u, "settle_step": settle, "maxvio_batch": vio, "train.steps": steps,
                  "bias_travel": math.nan if mode == "quantile" else 50.0, "train.batch_size": 4,
                  "train.grad_accum": 1, "model.seq_len": 256, "world_size": 1}
        tables.append_run(tmp_path, RunResult(record))
    return tmp_path


def test_rate_is_the_square_root_law_on_each_runs_a_and_b(folder, capsys):
    assert main(["rate", str(folder), "--steps", "800"]) == 0
    out = capsys.readouterr().out
    # A = settle x u = 1.0, 1.44, 1.21; B = 0.2 / 0.01 = 20; u* = sqrt(A / (20 x 800)), averaged on the log
    # scale: the geometric mean of A is (1.0 x 1.44 x 1.21)^(1/3)
    a = (1.0 * 1.44 * 1.21) ** (1 / 3)
    expected = math.sqrt(a / (20 * 800))
    assert f"u = {expected:.3g}" in out and "from 3 run(s)" in out
    assert "B = maxvio_batch / u = 20" in out and "warning" not in out  # 800 steps: within 2x the measured 400
    low, high = (float(x) for x in re.search(r"interval ([\d.e-]+) to ([\d.e-]+)\)", out).groups())
    assert low < expected < high  # the interval is about the estimate itself
    # at that u a run settles after A / u steps: a / u* of 800
    assert f"{a / expected / 800:.1%}" in out


def test_rate_warns_outside_what_was_measured(folder, capsys):
    assert main(["rate", str(folder), "--steps", "25000", "--tokens-per-step", "65536"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 2 and "25,000 steps" in warnings[0] and "65,536 tokens per step" in warnings[1]


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], r"--steps = 0 must be a whole number"),
    (["--steps", "100", "--variant", "nope"], r"--variant 'nope' is not among .*\['loss_free'\]"),
    (["--steps", "100", "--tokens-per-step", "-5"], r"--tokens-per-step = -5 must be"),
])
def test_rate_bad_input_exits_2(folder, capsys, args, message):
    assert main(["rate", str(folder), *args]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


def test_rate_on_a_folder_without_dynamics_exits_2(tmp_path, capsys):
    tables.append_run(tmp_path, RunResult({"run_id": "x", "status": "ok", "variant": "v", "val_loss": 1.0}))
    assert main(["rate", str(tmp_path), "--steps", "100"]) == 2
    assert "have no controller dynamics" in capsys.readouterr().err
    assert main(["rate", str(tmp_path / "missing"), "--steps", "100"]) == 2


def test_rate_warns_when_the_targets_experts_or_k_were_not_measured(folder, capsys):
    from harness import tables as t

    runs = t.read(folder)
    assert "model.num_experts" not in runs  # the fixture's runs do not say: every target value is unmeasured
    assert main(["rate", str(folder), "--steps", "800", "--experts", "256", "--top-k", "4"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 2 and "experts = 256 was not measured" in warnings[0] and "k = 4" in warnings[1]
    assert main(["rate", str(folder), "--steps", "800", "--experts", "0"]) == 2
    assert "--experts = 0 must be a whole number >= 1" in capsys.readouterr().err
