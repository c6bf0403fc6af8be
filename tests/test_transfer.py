"""The bias-rate transfer law (issue 21, items 2-3): the best rate per cell of a study, the fitted
exponent with its interval, the prediction for a target and the check against a direct sweep,
through `moe-harness rate`, on synthetic studies whose law is known."""

import math
import re

import numpy as np
import pytest

from harness import tables
from harness.analysis import transfer
from harness.cli import main
from harness.engine.train import RunResult

RATES = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2]
STEPS = [100, 200, 400, 800]
BATCHES = [8, 16]  # x seq_len 64: 512 and 1024 tokens per step


def true_rate(steps, tokens, p, q=0.0):
    return 0.03 * (steps / 100) ** p * (tokens / 512) ** q


def write_run(folder, i, steps, batch, rate, seed, loss, maxvio=0.1, variant="loss_free"):
    # NOTE: a suite's [grid] appends its point to the label, as experiments/rate_transfer.toml's runs show
    label = f"{variant}[train.steps={steps},train.batch_size={batch},router.bias_rate={rate}]"
    record = {"run_id": f"r{i}", "status": "ok", "variant": label, "seed": seed, "router.bias_mode": "loss_free",
              "router.bias_rate": rate, "settle_step": steps / 3, "maxvio_batch": maxvio, "maxvio_global": maxvio,
              "bias_travel": 10.0, "train.steps": steps, "train.batch_size": batch, "train.grad_accum": 1,
              "model.seq_len": 64, "world_size": 1, "val_loss": loss}
    steps_rows = [{"run_id": f"r{i}", "step": s, "maxvio_batch": maxvio * (1 + 1 / (1 + s))} for s in (10, 20)]
    tables.append_run(folder, RunResult(record, steps=steps_rows))


WOBBLE = [1, -1, -1, 1, -1, 1, 1, -1]  # signs that sum to 0 within each length and each batch: no bias in p or q


def make_study(folder, p, q=0.0, wobble=0.05, seeds=(0, 1, 2), seed_wobble=0.1):
    """Loss = 2 + 0.05 (log u - log u*_s)^2 + a seed offset; u* follows the law times a small wobble per
    cell, and each seed's own u*_s sits -w, 0 or +w from it in log (a different seed each cell), so
    the seed-mean curve's optimum is u* and the per-seed fits scatter about the law."""
    i = 0
    for c, (steps, batch) in enumerate((s, b) for s in STEPS for b in BATCHES):
        best = true_rate(steps, batch * 64, p, q) * math.exp(wobble * WOBBLE[c])
        for rate in RATES:
            for seed in seeds:
                mine = best * math.exp(seed_wobble * ((seed + c) % 3 - 1))
                write_run(folder, i, steps, batch, rate, seed, 2 + 0.05 * math.log(rate / mine) ** 2 + 0.01 * seed)
                i += 1
    return folder


def numbers(pattern, text):
    return [float(x) for x in re.search(pattern, text).groups()]


def test_vertex_finds_the_minimum_of_a_parabola():
    x = np.log([1e-3, 2e-3, 4e-3])
    y = (x - math.log(1.7e-3)) ** 2
    assert math.exp(transfer.vertex(x, y)) == pytest.approx(1.7e-3)
    assert transfer.vertex(x, -y) == x[1]  # no minimum: the middle point


@pytest.mark.parametrize("p, holds", [(-0.5, "inside"), (-1.0, "outside"), (0.0, "outside")])
def test_rate_fits_the_law_of_a_study_and_tests_the_square_root(tmp_path, capsys, p, holds):
    make_study(tmp_path, p, q=0.25)
    assert main(["rate", str(tmp_path), "--steps", "1600", "--tokens-per-step", "512"]) == 0
    out = capsys.readouterr().out
    p_hat, low, high = numbers(r"p = (-?[\d.]+) \(seed-level 95 % interval (-?[\d.]+) to (-?[\d.]+);", out)
    assert low <= p <= high and abs(p_hat - p) < 0.05 and high - low > 0.05  # the seeds scatter: a real interval
    assert f"-0.5 is {holds} it" in out
    q_hat, q_low, q_high = numbers(r"q = (-?[\d.]+) \(seed-level 95 % interval (-?[\d.]+) to (-?[\d.]+);", out)
    assert q_low <= 0.25 <= q_high
    [rate] = numbers(r"u = ([\d.e-]+) for 1,600 steps", out)
    assert rate == pytest.approx(true_rate(1600, 512, p, 0.25), rel=0.1)
    pred_low, pred_high, line_low, line_high = numbers(
        r"prediction interval for one new run's best rate: ([\d.e-]+) to ([\d.e-]+) \(the law's own seed-level 95 % "
        r"interval at the target: ([\d.e-]+) to ([\d.e-]+)\)", out)
    assert pred_low < line_low <= rate <= line_high < pred_high  # a new run scatters about the line
    assert line_low <= true_rate(1600, 512, p, 0.25) <= line_high
    spread = numbers(r"parabola through 3 points ([\d.e-]+), least-squares quadratic over 5 points ([\d.e-]+), "
                     r"a/u \+ b u \+ c ([\d.e-]+)", out)
    assert spread[0] == pytest.approx(rate) and all(u == pytest.approx(rate, rel=0.5) for u in spread)
    # 1600 steps is 2x the longest measured 800: inside the x2 band, no warning
    assert "warning" not in out
    # every synthetic run settles at a third of its steps: the fitted settle fraction says so
    assert "unbalanced for about 33.3% of the run" in out


def test_cells_whose_best_rate_is_at_the_grid_edge_are_left_out(tmp_path, capsys):
    make_study(tmp_path, p=-1.2, wobble=0.0)  # u* from 0.03 at 100 steps to 2.5e-3 at 800: inside the grid
    cells = transfer.best_rates(transfer.study_runs(tables.read(tmp_path), tables.read(tmp_path, "steps")), "val_loss", 0.3)
    assert not cells["at_edge"].any()
    assert main(["rate", str(tmp_path), "--steps", "3200", "--tokens-per-step", "512"]) == 0
    out = capsys.readouterr().out
    # 3200 steps: 4x the longest run; the law is extrapolated, and the command says so
    assert "warning: the target's 3,200 steps lie outside the measured 100-800" in out

    edge = tmp_path / "edge"
    make_study(edge, p=-3.0, wobble=0.0)  # 0.03 x 8^-3 = 6e-5 at 800 steps: below the grid's 1e-3
    cells = transfer.best_rates(transfer.study_runs(tables.read(edge), tables.read(edge, "steps")), "val_loss", 0.3)
    assert set(cells[cells["at_edge"]]["steps"]) == {400, 800}
    assert main(["rate", str(edge), "--steps", "200", "--tokens-per-step", "512"]) == 0
    assert "left out (best rate at the edge of the grid or no feasible rate): 400 steps x 512 tokens" in \
        capsys.readouterr().out


def test_the_maxvio_cap_decides_which_rates_count(tmp_path):
    for i, rate in enumerate(RATES):
        for seed in (0, 1):  # the loss is best at the smallest rate, which never balances
            write_run(tmp_path, 10 * i + seed, 100, 8, rate, seed, loss=2 + rate, maxvio=0.5 if rate < 4e-3 else 0.1)
    runs = transfer.study_runs(tables.read(tmp_path), tables.read(tmp_path, "steps"))
    assert transfer.cell_optimum(runs, "val_loss", cap=0.3)["rate"] == 4e-3
    assert transfer.cell_optimum(runs, "val_loss", cap=1.0)["rate"] == 1e-3
    # the time-averaged MaxVio objective reads the steps table: lowest where the rate balances
    assert transfer.cell_optimum(runs, "maxvio_time", cap=0.3)["value"] == pytest.approx(0.1 * (1 + (1 / 11 + 1 / 21) / 2))


def test_check_says_whether_the_prediction_is_inside_a_direct_sweeps_flat_optimum(tmp_path, capsys):
    study = make_study(tmp_path / "study", p=-0.5)
    heldout = tmp_path / "heldout"
    target = true_rate(1600, 512, -0.5)
    for i, rate in enumerate(RATES):
        for seed in range(3):  # paired noise larger than the loss differences near the best
            noise = 0.01 * ((i * 7 + seed * 3) % 5 - 2)
            write_run(heldout, 10 * i + seed, 1600, 8, rate, seed, 2 + 0.05 * math.log(rate / target) ** 2 + noise)
    assert main(["rate", str(study), "--steps", "1600", "--tokens-per-step", "512", "--check", str(heldout)]) == 0
    out = capsys.readouterr().out
    own, own_low, own_high = numbers(r"its own best rate ([\d.e-]+) \(seed-level 95 % interval ([\d.e-]+) to ([\d.e-]+), "
                                     r"3 seeds, by val loss\)", out)
    assert own_low <= target <= own_high
    assert "OVERLAPS it; the predicted" in out and "flat optimum (paired val loss within noise of its best" in out
    # the study's law is the square-root law itself: the check cannot tell the two apart
    assert "the check cannot tell the fitted law from the square-root law" in out

    far = tmp_path / "far"
    for i, rate in enumerate(RATES):
        for seed in range(3):  # a sharp optimum at 6.4e-2, far from the prediction
            write_run(far, 10 * i + seed, 1600, 8, rate, seed, 2 + math.log(rate / 6.4e-2) ** 2 + 0.001 * seed)
    assert main(["rate", str(study), "--steps", "1600", "--tokens-per-step", "512", "--check", str(far)]) == 0
    out = capsys.readouterr().out
    assert "MISSES it; the predicted" in out and "is OUTSIDE it" in out and "matches neither prediction" in out


@pytest.mark.parametrize("args, message", [
    (["--objective", "loss"], r"--objective = 'loss'; allowed: \['maxvio_time', 'val_loss'\]"),
    (["--cap", "0"], r"--cap = 0.0 must be a MaxVio_global above 0"),
    ([], r"the study varied tokens per step: give the target's --tokens-per-step"),
    (["--tokens-per-step", "512", "--check", "missing"], r"--check missing: no results there"),
])
def test_rate_on_a_study_bad_input_exits_2(tmp_path, capsys, args, message):
    make_study(tmp_path / "study", p=-0.5)
    assert main(["rate", str(tmp_path / "study"), "--steps", "400", *args]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


def test_a_study_of_two_variants_needs_variant(tmp_path, capsys):
    make_study(tmp_path, p=-0.5)
    write_run(tmp_path, 9999, 100, 8, 1e-3, 0, 2.0, variant="other")
    write_run(tmp_path, 9998, 200, 8, 2e-3, 0, 2.0, variant="other")
    assert main(["rate", str(tmp_path), "--steps", "400", "--tokens-per-step", "512"]) == 2
    assert "several variants ['loss_free', 'other']: choose one with --variant" in capsys.readouterr().err
    assert main(["rate", str(tmp_path), "--steps", "400", "--tokens-per-step", "512", "--variant", "loss_free"]) == 0


def test_check_needs_a_study(tmp_path, capsys):
    write_run(tmp_path, 0, 100, 8, 1e-2, 0, 2.0)
    assert main(["rate", str(tmp_path), "--steps", "400", "--check", str(tmp_path)]) == 2
    assert "--check needs a transfer study" in capsys.readouterr().err


def test_the_report_draws_a_studys_best_rates_and_its_fitted_law(tmp_path):
    from harness.analysis.report import figures as report

    make_study(tmp_path, p=-0.5, q=0.25)
    runs = tables.read(tmp_path).assign(**{"router.bias_mode": "loss_free"})
    [(stem, fig, caption)] = report.transfer_figure(runs, tables.read(tmp_path, "steps"))
    assert stem == "rate_transfer" and "fitted law" in caption
    left = fig.axes[0]
    assert left.get_xscale() == "log" and left.get_yscale() == "log" and left.get_title() == "val_loss"
    points = [line for line in left.get_lines() if line.get_linestyle() == "None" and len(line.get_xdata())]
    assert sorted(len(line.get_xdata()) for line in points) == [4, 4]  # 4 lengths x 2 tokens-per-step, all inside
    fitted = [line for line in left.get_lines() if line.get_linestyle() == "-"]
    for line in fitted:  # the fitted law's lines fall as T^-0.5 here
        x, y = np.log(line.get_xdata()), np.log(line.get_ydata())
        assert (y[-1] - y[0]) / (x[-1] - x[0]) == pytest.approx(-0.5, abs=0.05)
    assert report.transfer_figure(runs[runs["train.steps"] == 100], tables.read(tmp_path, "steps")) == []  # one length
