"""Capacity-priced routing: the price of an expert over its cap rises by eta times its excess
load and never goes below 0; tokens route by top-k of logits less the prices, the gates untouched;
a run balances better than its control; a negative slack exits 2 with the allowed values."""

import torch

from harness.cli import main
from harness.engine.train import run
from harness.routing import Router, get_router_config
from harness.routing.controllers.capacity_price import price_step
from harness.suites.keys import resolve

E = 4


def test_the_price_rises_over_the_cap_and_stays_at_0_under_it():
    counts = torch.tensor([10.0, 30.0, 40.0, 0.0])  # mean 20: loads 0.5, 1.5, 2.0, 0
    prices = price_step(torch.tensor([0.0, 0.0, 0.3, 0.05]), counts, eta=0.1, slack=0.25)
    # by hand: 0 + 0.1 (0.5 - 1.25) -> 0; 0.1 (1.5 - 1.25) = 0.025; 0.3 + 0.075 = 0.375; 0.05 - 0.125 -> 0
    torch.testing.assert_close(prices, torch.tensor([0.0, 0.025, 0.375, 0.0]))


def test_it_routes_by_the_logits_less_the_prices_and_the_gates_stay_the_scores():
    router = Router(E, E, 1, get_router_config("capacity_price"))
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(E))
    router.balance_update(torch.tensor([0.0, 0.0, 0.0, 100.0]), num_tokens=100)  # expert 3 far over its cap
    lam = -router.expert_bias
    assert lam[3] > 0 and (lam[:3] == 0).all()
    logits = torch.tensor([[0.0, -1.0, -2.0, lam[3].item() - 1e-3], [0.0, -1.0, -2.0, lam[3].item() + 1e-3]])
    out = router(logits)
    assert out.expert_idx_A.tolist() == [0, 3]  # z_3 - lambda_3 just under, then just over z_0 = 0
    torch.testing.assert_close(out.gate_A, torch.ones(2))  # k = 1, renormalised: the scores' own


def test_capacity_pricing_balances_better_than_its_control(tiny_settings):
    settings = {**tiny_settings, "train.steps": 60, "train.eval_every": 60}
    control = run(resolve({**settings, "router": "sigmoid_topk"})).record
    priced = run(resolve({**settings, "router": "capacity_price", "router.cp_rate": 0.05})).record
    assert priced["status"] == "ok" and priced["maxvio_global"] < control["maxvio_global"]
    assert min(min(layer) for layer in priced["expert_bias"]) < 0 <= -max(max(layer) for layer in priced["expert_bias"])


def test_a_negative_slack_exits_2_with_the_allowed_values_and_writes_nothing(make_suite, tmp_path, capsys):
    suite = make_suite([{"router": "capacity_price", "router.cp_slack": -0.1}])
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "router.cp_slack = -0.1 must be a finite number in [0.0, inf]" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
