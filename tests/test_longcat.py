"""Zero-computation experts (LongCat-Flash): beside the FFN experts, identity experts that return
the token, gated; the controller moves the FFN experts' bias only and steers their number per token
to the budget; the router records the FFN experts alone; a budget above k exits 2, and a family
(which has no identity experts) exits 2 too."""

import pytest
import torch

from harness.cli import main
from harness.engine.moe import MoELayer
from harness.engine.train import run
from harness.routing import Router, get_router_config
from harness.routing.controllers.longcat import longcat_step
from harness.suites.keys import resolve

DIM, E, K = 16, 8, 2


def test_zero_experts_route_beside_the_ffn_experts_and_return_the_token_gated():
    torch.manual_seed(0)
    router = Router(DIM, E, K, get_router_config("longcat", zc_experts=4))
    assert router.gate.weight.shape == (E + 4, DIM) and router.expert_bias.shape == (E,)
    x = torch.randn(64, DIM)
    out = router(x)
    logits = x @ router.gate.weight.T
    top = logits.softmax(-1).topk(K, dim=1)
    zero_T = torch.where(top.indices >= E, top.values, 0.0).sum(1)
    torch.testing.assert_close(out.identity_T, zero_T)  # not renormalised: each zero expert's own score
    ffn = (top.indices < E).sum(1)
    assert torch.bincount(out.token_idx_A, minlength=64).tolist() == ffn.tolist() and 0 < zero_T.count_nonzero() < 64
    assert out.counts_E.shape == (E,) and out.counts_E.sum() == ffn.sum() and out.scores_TE.shape == (64, E)
    layer = MoELayer(DIM, 32, E, K, get_router_config("longcat", zc_experts=4))
    layer.router.load_state_dict(router.state_dict())
    y = layer(x[None])[0]
    route = layer.last_route
    plain = torch.zeros_like(x).index_add(0, route.token_idx_A, torch.stack([
        route.gate_A[a] * torch.nn.functional.linear(
            torch.nn.functional.silu(x[t] @ layer.experts.w1[e]) * (x[t] @ layer.experts.w3[e]), layer.experts.w2[e].T)
        for a, (t, e) in enumerate(zip(route.token_idx_A.tolist(), route.expert_idx_A.tolist()))]))
    torch.testing.assert_close(y, plain + zero_T[:, None] * x, rtol=1e-5, atol=1e-5)


def test_the_ffn_bias_moves_toward_its_share_of_the_budget():
    counts = torch.tensor([30.0, 10.0, 20.0, 0.0])  # 60 of 40 tokens x budget 1.5 (k = 2): share 15 each
    step = longcat_step(counts, 40, 2, 1.5)
    torch.testing.assert_close(step, (1.5 / 4 - counts / 40) / 2)
    assert step[0] < 0 < step[3] and step[2] < 0 < step[1]


def test_the_controller_holds_the_ffn_experts_per_token_at_the_budget(tiny_settings):
    settings = {**tiny_settings, "router": "longcat", "train.steps": 60, "train.eval_every": 60}
    held = run(resolve(settings)).record
    free = run(resolve({**settings, "router.bias_rate": 0.0})).record
    budget = 2 / 3 * 2
    assert held["status"] == "ok" and abs(held["mean_k"] - budget) < 0.2, held["mean_k"]
    assert abs(free["mean_k"] - budget) > abs(held["mean_k"] - budget)  # the bias, not chance, holds it
    assert held["compute_ratio"] == pytest.approx(held["mean_k"] / 2)  # 1 - compute_ratio: the FFN compute saved


@pytest.mark.parametrize("settings, message", [
    ({"router.zc_budget": 1.5}, r"router.zc_budget = 1.5 must be a finite number in [0.0, 1.0]"),
    ({"model.family": "mixtral"}, "has no zero-computation experts"),
])
def test_a_budget_above_k_or_a_family_exits_2_and_writes_nothing(make_suite, tmp_path, capsys, settings, message):
    if "model.family" in settings:
        pytest.importorskip("transformers")
    suite = make_suite([{"router": "longcat", **settings}])
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
