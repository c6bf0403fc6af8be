"""Controller dynamics (issue 21, item 1), each on a synthetic trajectory whose answer is known,
and in a real run's row."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from harness.engine.dynamics import BiasDynamics, settle_step

U = 0.01


def test_settle_step_is_where_maxvio_stops_trending():
    """A fall over the first 100 of 400 steps, then a flat level with noise: it settles near step
    100 (the 5 % grid: 81 to 101); a run still falling at its end has not settled (NaN)."""
    rng = np.random.default_rng(0)
    vio = list(np.linspace(1.0, 0.2, 100)) + list(0.2 + rng.normal(0, 0.01, 300))
    assert 81 <= settle_step(vio) <= 101
    assert math.isnan(settle_step(list(np.linspace(1.0, 0.2, 400))))
    # the fall ends later, and the settle step moves with it (not with the run's own final level)
    later = list(np.linspace(1.0, 0.2, 200)) + list(0.2 + rng.normal(0, 0.01, 200))
    assert 181 <= settle_step(later) <= 221
    assert settle_step([0.1] * 40) == 1 and math.isnan(settle_step([])) and math.isnan(settle_step([0.1] * 10))


def trajectory(steps: int, step_fn) -> BiasDynamics:
    dyn, bias = BiasDynamics(steps, U), torch.zeros(2, 4)
    for step in range(1, steps + 1):
        new = bias + step_fn(step)
        dyn.update(step, bias, new)
        bias = new
    return dyn


def test_an_oscillating_bias_flips_every_step_and_does_not_drift():
    dyn = trajectory(40, lambda t: U * (1 if t % 2 else -1) * torch.tensor([1.0, -1.0, 1.0, -1.0]))
    out = dyn.summary([0.1] * 40)
    assert out["bias_flip_share"] == 1.0
    assert out["bias_drift"] == 0.0  # 3/4 of the run and the end are an even number of steps apart
    assert out["bias_spread"] == pytest.approx(0.0) or out["bias_spread"] == pytest.approx(2 * U)


def test_a_steady_drift_never_flips_and_travels_its_spread_in_units_of_u():
    direction = torch.tensor([1.0, 0.5, -0.5, -1.0])
    dyn = trajectory(40, lambda t: U * direction)
    out = dyn.summary([0.5] * 40)
    assert out["bias_flip_share"] == 0.0
    assert out["bias_spread"] == pytest.approx(40 * U * 2)  # from -40u to +40u
    assert out["bias_travel"] == pytest.approx(80)  # the fewest steps a sign rule needs for that spread
    rms_last_quarter = math.sqrt(((10 * direction) ** 2).mean().item())  # 10 steps of u * direction, in u
    assert out["bias_drift"] == pytest.approx(rms_last_quarter)


def test_every_controller_run_has_the_dynamics_columns(tiny_settings):
    from harness.suites.keys import resolve
    from harness.engine.train import run

    record = run(resolve({**tiny_settings, "router": "loss_free", "router.bias_rate": 0.01,
                          "train.steps": 12})).record
    assert (1 <= record["settle_step"] <= 12 or math.isnan(record["settle_step"])) and record["bias_travel"] == pytest.approx(record["bias_spread"] / 0.01)
    assert 0 <= record["bias_flip_share"] <= 1 and record["maxvio_batch_sd"] >= 0
    plain = run(resolve({**tiny_settings, "router": "softmax_topk"})).record
    assert "settle_step" not in plain  # no controller, no dynamics


def presets_by_controller():
    from harness.routing.controllers import controller_names
    from harness.routing import get_router_config, router_names

    first = {}
    for name in router_names():
        first.setdefault(get_router_config(name).bias_mode, name)
    return [(mode, first[mode]) for mode in controller_names() if mode != "none" and mode in first]


@pytest.mark.parametrize("mode, preset", presets_by_controller())
def test_every_controller_records_its_speed_in_its_own_units(tiny_settings, mode, preset):
    from harness.suites.keys import resolve
    from harness.routing.controllers import get_controller
    from harness.engine.train import run

    cfg = resolve({**tiny_settings, "router": preset, "train.steps": 8})
    record = run(cfg).record
    controller = get_controller(mode)
    if not controller.moves_bias:  # phi-balancing prices the experts through a loss: no bias to watch
        assert "controller_speed" not in record and "settle_step" not in record
        return
    assert record["controller_speed_of"] == controller.speed_of(cfg.router_cfg)
    assert record["controller_speed"] == pytest.approx(controller.speed(cfg.router_cfg))
    # NOTE: the controller says what its speed is ("router.x" or "1 - router.x"); the run records that setting
    said = controller.speed_of(cfg.router_cfg)
    setting = cfg.router_cfg.param(said.split("router.")[1])
    expected = 1 - setting if said.startswith("1 - ") else setting
    assert record["controller_speed"] == pytest.approx(expected) and expected > 0
    assert (controller.rate(cfg.router_cfg) is None) == pd.isna(record["bias_travel"])  # travel in u where u drives it


def test_controller_rates_sets_controllers_side_by_side_against_their_speed():
    from harness.analysis import plots

    rows = [{"router.bias_mode": mode, "controller_speed_of": of, "controller_speed": speed, "seed": seed,
             "settle_step": 100 * (1 - speed) + seed, "train.steps": 200, "maxvio_batch": speed + 0.01 * seed}
            for mode, of, speeds in (("loss_free", "router.bias_rate", [1e-3, 1e-2]),
                                     ("quantile", "1 - router.qb_ema", [0.1, 0.5]))
            for speed in speeds for seed in (0, 1)]
    fig = plots.controller_rates(pd.DataFrame(rows))
    left, right = fig.axes[:2]
    assert left.get_xscale() == "log" and right.get_xscale() == "log"
    lines = {tuple(line.get_xdata()) for line in left.get_lines() if len(line.get_xdata()) == 2}
    assert (1e-3, 1e-2) in lines and (0.1, 0.5) in lines  # one mean line per controller, over its own speeds
    labels = {t.get_text() for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
              for t in legend.get_texts()}
    assert {"loss_free (router.bias_rate)", "quantile (1 - router.qb_ema)"} <= labels
