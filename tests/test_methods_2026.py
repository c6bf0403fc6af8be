"""The 2025-26 methods (issue 27), each against its rule on hand-made numbers: Expert Threshold
(threshold, EMA with bias correction, warm-up, capacity clamp), BIP's dual (the coordinate steps,
and the step pooled within a histogram bin), dual ascent (its identity with the sign rule) and
phi-balancing (the price and the loss); then each balancing better than its control in a run."""

import math

import pytest
import torch

from harness.suites.keys import resolve
from harness.engine.train import run
from harness.routing import Router, get_router_config
from harness.routing.controllers.bip_dual import capacity_rank, solve
from harness.routing.controllers.dual_ascent import dual_ascent_step
from harness.routing.controllers.expert_threshold import clamp_counts, per_expert_target
from harness.routing.controllers.loss_free import loss_free_step
from harness.routing.controllers.quantile import QB_BINS

E = 4


def logit_router(name: str, top_k: int, **settings) -> Router:
    """A router whose logits are its input: a [T, E] batch of logits routes as written."""
    router = Router(E, E, top_k, get_router_config(name, **settings))
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(E))
    return router


def kth(values, k):
    return torch.tensor([sorted(col, reverse=True)[k - 1] for col in values.T.tolist()])


def test_expert_threshold_routes_a_hand_made_batch_by_the_rule():
    torch.manual_seed(0)
    beta, k = 0.5, 1
    router = logit_router("expert_threshold", k, et_beta=beta)
    first = torch.randn(8, E)  # K = floor(8 x 1 / 4) = 2 tokens per expert
    out = router(first)
    start = -kth(first, 2)  # before any update: the first batch's own cut-offs, in logit space
    torch.testing.assert_close(router.expert_bias, start)
    assert out.counts_E.tolist() == [1.0] * E  # strictly above its 2nd best: each expert its best token
    torch.testing.assert_close(out.gate_A, torch.sigmoid(first[out.token_idx_A, out.expert_idx_A]))  # not renormalised
    router.balance_update(out.counts_E, num_tokens=8)
    c1 = kth(first, 2)  # c_raw = 0.5 cut, corrected by 1 - 0.5: the cut itself
    torch.testing.assert_close(router.controller.thresholds().float(), c1)
    a, b = torch.randn(8, E), torch.randn(8, E) + 1.0  # a step of two micro-batches: their cuts averaged
    router(a), router(b)
    router.balance_update(torch.ones(E), num_tokens=16)
    raw = beta * (1 - beta) * c1 + (1 - beta) * (kth(a, 2) + kth(b, 2)) / 2
    c2 = raw / (1 - beta ** 2)
    torch.testing.assert_close(router.controller.thresholds().float(), c2)
    router.eval()  # frozen: the route is r > c, token by token
    probe = torch.randn(16, E)
    out = router(probe)
    chosen = torch.zeros(16, E, dtype=torch.bool)
    chosen[out.token_idx_A, out.expert_idx_A] = True
    assert torch.equal(chosen, probe > c2)
    router(torch.randn(8, E))  # evaluation moves nothing
    torch.testing.assert_close(router.controller.thresholds().float(), c2)


def test_expert_threshold_warm_up_and_clamp_on_a_hand_made_batch():
    torch.manual_seed(1)
    router = logit_router("expert_threshold", 1, et_warmup_steps=1, et_capacity=0.5)
    batch = torch.randn(8, E)
    out = router(batch)  # warm-up: expert choice, each expert exactly its K = 2 best tokens
    assert out.counts_E.tolist() == [2.0] * E
    for e in range(E):
        assert set(out.token_idx_A[out.expert_idx_A == e].tolist()) == set(batch[:, e].topk(2).indices.tolist())
    router.balance_update(out.counts_E, num_tokens=8)
    router.expert_bias.copy_(torch.tensor([-10.0, 10.0, 0.0, 0.0]))  # b = -c: expert 0 fires on none, 1 on all
    batch = torch.randn(8, E)
    out = router(batch)  # clamp: between (1 - 0.5) 2 = 1 and (1 + 0.5) 2 = 3 tokens each
    counts = out.counts_E.tolist()
    assert counts[0] == 1 and counts[1] == 3 and all(1 <= c <= 3 for c in counts)
    assert set(out.token_idx_A[out.expert_idx_A == 0].tolist()) == {int(batch[:, 0].argmax())}  # its best, below
    assert set(out.token_idx_A[out.expert_idx_A == 1].tolist()) == set(batch[:, 1].topk(3).indices.tolist())
    router.eval()  # no clamp at evaluation: the thresholds alone
    assert router(batch).counts_E.tolist()[:2] == [0.0, 8.0]


@pytest.mark.parametrize("centre,spread", [(0.0, 20.0), (14.0, 2.0), (16.0, 1.4)])
def test_expert_threshold_routes_large_logits_exactly_as_r_above_c(centre, spread):
    """Where a float32 sigmoid saturates (r > ~16.6 is exactly 1.0), the route is still r > c."""
    torch.manual_seed(3)
    router = logit_router("expert_threshold", 2, et_beta=0.9)
    for _ in range(3):  # thresholds that have moved off the first batch's cut-offs
        out = router(centre + spread * torch.randn(256, E))
        router.balance_update(out.counts_E, num_tokens=256)
    c = router.controller.thresholds()
    for training in (True, False):
        router.train(training)
        probe = centre + spread * torch.randn(1152, E)  # 4,608 cells
        out = router(probe)
        chosen = torch.zeros(1152, E, dtype=torch.bool)
        chosen[out.token_idx_A, out.expert_idx_A] = True
        assert torch.equal(chosen, probe.double() > c)


@pytest.mark.parametrize("tokens,capacity,least,most", [(40, 0.7, 3, 17), (40, 0.5, 5, 15), (8, 0.5, 1, 3)])
def test_expert_threshold_clamp_bounds_are_exact(tokens, capacity, least, most):
    """[ceil((1 - C) K), floor((1 + C) K)] in exact arithmetic: K = 10, C = 0.7 holds at least 3, not 4."""
    target = per_expert_target(tokens, 1, E)
    biased = torch.randn(tokens, E, dtype=torch.float64)
    none = clamp_counts(biased, torch.zeros(tokens, E, dtype=torch.bool), target, capacity).sum(0)
    every = clamp_counts(biased, torch.ones(tokens, E, dtype=torch.bool), target, capacity).sum(0)
    assert none.tolist() == [least] * E and every.tolist() == [most] * E


def test_expert_threshold_k_is_the_floor_as_in_the_authors_code():
    assert [per_expert_target(t, 1, E) for t in (6, 7, 9, 10)] == [1, 1, 2, 2]


def brute_force_dual(scores, q, top_k, iters):
    """The reconstructed coordinate steps, written plainly with Python lists."""
    T, n = len(scores), len(scores[0])
    rank = T * top_k // n + 1
    for _ in range(iters):
        p = [max(0.0, sorted((scores[t][i] - q[i] for i in range(n)), reverse=True)[top_k]) for t in range(T)]
        q = [max(0.0, sorted((scores[t][i] - p[t] for t in range(T)), reverse=True)[rank - 1]) for i in range(n)]
    return q


def test_bip_dual_solves_the_dual_on_a_hand_made_batch():
    scores = torch.tensor([[0.9, 0.7], [0.8, 0.1], [0.6, 0.5], [0.95, 0.3]])
    # one step by hand: p = the 2nd best of each row = [0.7, 0.1, 0.5, 0.3]; s - p in expert 0's column is
    # [0.2, 0.7, 0.1, 0.65], its 3rd largest (capacity 4 x 1 / 2 = 2, plus 1) 0.2; expert 1's column is all 0
    torch.testing.assert_close(solve(scores, torch.zeros(2), 1, 1), torch.tensor([0.2, 0.0]))
    torch.manual_seed(2)
    many = torch.rand(40, 6)
    for iters in (1, 2, 4):
        torch.testing.assert_close(solve(many, torch.zeros(6), 2, iters), torch.tensor(
            brute_force_dual(many.tolist(), [0.0] * 6, 2, iters)))
    router = Router(6, 6, 2, get_router_config("bip_dual", bip_order="before", bip_iters=2))
    out = router(many[:, :6] * 4)  # "before": this very batch's duals route it
    q = solve(out.scores_TE.detach(), torch.zeros(6), 2, 2)
    torch.testing.assert_close(router.expert_bias, -q)
    assert torch.equal(out.expert_idx_A.view(40, 2).sort(dim=1).values,
                       (out.scores_TE.detach() - q).topk(2, dim=1).indices.sort(dim=1).values)
    torch.testing.assert_close(out.gate_A, out.scores_TE[out.token_idx_A, out.expert_idx_A]
                               / out.scores_TE.gather(1, out.expert_idx_A.view(40, 2)).sum(1).repeat_interleave(2))


@pytest.mark.parametrize("iters", [1, 3])
def test_bip_dual_after_pools_the_step_within_a_bin(iters):
    torch.manual_seed(3)
    router = Router(16, 8, 2, get_router_config("bip_dual", bip_iters=iters))
    batches = [torch.randn(n, 16) * (1 + i) for i, n in enumerate((64, 200, 37))]
    with torch.no_grad():
        scores = torch.cat([router(x).scores_TE for x in batches])
    router.balance_update(torch.ones(8), num_tokens=301)
    exact = solve(scores, torch.zeros(8), 2, iters)
    assert capacity_rank(301, 2, 8) == 301 * 2 // 8 + 1
    torch.testing.assert_close(router.expert_bias, -exact, atol=iters / QB_BINS, rtol=0)


def test_dual_ascent_with_a_step_per_violation_is_the_sign_rule():
    counts = torch.tensor([10.0, 30.0, 20.0, 25.0, 15.0])
    nbar, u = counts.mean(), 0.01
    violation = (nbar - counts).abs()
    eps = torch.where(violation > 0, u / violation.clamp_min(1e-12), torch.zeros_like(violation))
    torch.testing.assert_close(dual_ascent_step(counts, eps), -u * loss_free_step(counts, "sign", False))


def test_dual_ascent_steps_on_hand_counts():
    router = Router(E, E, 2, get_router_config("dual_ascent", da_eps=0.01, da_schedule="inverse"))
    counts = torch.tensor([10.0, 30.0, 20.0, 20.0])  # nbar = 20
    router.balance_update(counts, num_tokens=40)
    torch.testing.assert_close(router.expert_bias, torch.tensor([0.1, -0.1, 0.0, 0.0]))
    router.balance_update(counts, num_tokens=40)  # the second update's step is eps_0 / 2
    torch.testing.assert_close(router.expert_bias, torch.tensor([0.15, -0.15, 0.0, 0.0]))


@pytest.mark.parametrize("potential", ["entropy", "euclidean"])
def test_phi_balance_prices_the_experts_by_the_ema_on_hand_numbers(potential):
    eta, weight = 0.5, 0.1
    router = logit_router("phi_balance", 1, phi_rate=eta, phi_weight=weight, phi_potential=potential)
    x = torch.tensor([[2.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    out = router(x)
    pbar = torch.softmax(x, dim=1).mean(dim=0)
    assert out.aux_losses["phi_balance_loss"].item() == pytest.approx(0.0, abs=1e-7)  # m uniform: a flat price
    router.balance_update(out.counts_E, num_tokens=2)
    m = (1 - eta) * torch.full((E,), 0.25) + eta * pbar
    torch.testing.assert_close(router.controller.ema, m)
    raw = 1 + torch.log(m) if potential == "entropy" else m
    out = router(x)
    expected = weight * E * (pbar * (raw - raw.mean())).sum()
    torch.testing.assert_close(out.aux_losses["phi_balance_loss"], expected)
    out.aux_losses["phi_balance_loss"].backward()
    assert router.gate.weight.grad.abs().sum() > 0  # it balances through the gradient
    assert torch.equal(router.expert_bias, torch.zeros(E))  # and never through the bias


CONTROLS = {"expert_threshold": "sigmoid_topk", "bip_dual": "sigmoid_topk", "dual_ascent": "sigmoid_topk",
            "phi_balance": "softmax_topk"}
SETTINGS = {"expert_threshold": {}, "bip_dual": {}, "dual_ascent": {"router.da_eps": 2e-3},
            "phi_balance": {"router.phi_weight": 0.05, "router.phi_rate": 0.1}}


@pytest.mark.parametrize("name", list(CONTROLS))
def test_a_new_method_balances_better_than_the_control(tiny_settings, name):
    settings = {**tiny_settings, "train.steps": 60, "train.eval_every": 60}
    control = run(resolve({**settings, "router": CONTROLS[name]})).record
    balanced = run(resolve({**settings, "router": name, **SETTINGS[name]})).record
    assert balanced["status"] == "ok" and balanced["maxvio_global"] < control["maxvio_global"]
    assert math.isfinite(balanced["val_loss"])
