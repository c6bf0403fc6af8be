"""Router behaviour a user would notice, parametrized over every registered preset."""

import math
import re
import warnings

import pytest
import torch

from harness.routing import ROUTERS, Router, RouterConfig, get_router_config, register_router, resolve_router, router_names
from harness.routing import balancing
from harness.engine.metrics import maxvio

DIM, NUM_EXPERTS, TOP_K = 16, 8, 2
# NOTE: a capacity preset drops assignments by design, and zero-computation experts take some of a token's
# k, so neither is held to exactly k FFN experts per token
TOPK_PRESETS = [n for n in router_names() if get_router_config(n).selection == "topk"
                and not get_router_config(n).capacity_factor
                and not get_router_config(n).controller.zero_experts(get_router_config(n))]  # k of n + Z
THRESHOLD_PRESETS = [n for n in router_names() if get_router_config(n).selection == "threshold"]


def make_router(name: str, **overrides) -> Router:
    torch.manual_seed(0)
    return Router(DIM, NUM_EXPERTS, TOP_K, get_router_config(name, **overrides))


def test_the_design_card_presets_exist():
    assert {"softmax_topk", "softmax_topk_aux", "sigmoid_magnitude", "loss_free", "dynamic_k"} <= set(ROUTERS)


def test_unknown_router_lists_the_registered_names():
    with pytest.raises(ValueError, match="unknown router 'nope'.*loss_free.*softmax_topk"):
        get_router_config("nope")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_router("loss_free")(lambda: RouterConfig())


def test_unknown_override_key_names_the_allowed_keys():
    with pytest.raises(ValueError, match=r"unknown router key\(s\) \['bias_lr'\].*bias_rate"):
        get_router_config("loss_free", bias_lr=0.1)


@pytest.mark.parametrize("bad, match", [
    (dict(score_func="tanh"), r"router.score_func = 'tanh'.*'softmax', 'sigmoid'"),
    (dict(bias_mode="loss_free", bias_update="abs"), r"router.bias_update = 'abs'.*'sign', 'rms', 'linear'"),
    (dict(selection="threshold"), "threshold selection needs a controller"),
    (dict(output_form="magnitude", score_func="softmax"), "non-negative, non-softmax"),
    (dict(bias_mode="loss_free", bias_rate=-1.0), "router.bias_rate"),
    (dict(bias_mode="loss_free", bias_freeze_frac=1.0), r"bias_freeze_frac = 1.0 must be a finite number in \[0.0, 1.0\)"),
])
def test_bad_router_config_names_the_key(bad, match):
    with pytest.raises(ValueError, match=match):
        resolve_router(RouterConfig().replace(**bad))


@pytest.mark.parametrize("preset, name, value, key", [
    ("quantile_balancing", "bias_rate", 0.01, "bias_mode"),
    ("dynamic_k", "bias_update", "rms", "bias_mode"),
    ("loss_free", "qb_ema", 0.5, "bias_mode"),
    ("loss_free", "ec_chunk", 16, "selection"),
    ("dynamic_k", "sinkhorn_iters", 4, "selection"),
])
def test_a_setting_the_chosen_methods_do_not_read_is_refused_naming_those_that_do(preset, name, value, key):
    from harness.routing.controllers import CONTROLLERS
    from harness.routing.selection import SELECTIONS

    registry = CONTROLLERS if key == "bias_mode" else SELECTIONS  # NOTE: the methods asked, not listed here
    readers = re.escape(str(sorted(n for n, unit in registry.items() if name in unit.params)))
    cfg = get_router_config(preset)
    with pytest.raises(ValueError, match=rf"router.{name} is not read by router.selection = '{cfg.selection}' or "
                                         rf"router.bias_mode = '{cfg.bias_mode}'; it is read by router.{key} in {readers}"):
        get_router_config(preset, **{name: value})


def test_switching_a_presets_method_drops_the_presets_settings_for_the_old_one():
    cfg = get_router_config("loss_free", bias_mode="quantile")  # loss_free's bias_rate does not apply to quantile
    assert cfg.controller.name == "quantile" and "bias_rate" not in cfg.params
    with pytest.raises(ValueError, match="router.bias_rate is not read"):  # but the user's own is refused
        get_router_config("loss_free", bias_mode="quantile", bias_rate=0.01)


def test_k_greater_than_n_is_rejected():
    with pytest.raises(ValueError, match="top_k = 9 must be between 1 and num_experts = 8"):
        Router(DIM, 8, 9, RouterConfig())


@pytest.mark.parametrize("name", router_names())
def test_output_shapes_and_counts(name):
    router = make_router(name)
    out = router(torch.randn(12, DIM), seq_len=6, token_ids=torch.arange(12))  # ids: for a rule that hashes them
    num_assign = out.token_idx_A.numel()
    assert out.expert_idx_A.shape == out.gate_A.shape == (num_assign,)
    assert out.scores_TE.shape == (12, NUM_EXPERTS)
    dropped = 0 if out.num_dropped is None else out.num_dropped.item()  # capacity presets drop some
    assert out.counts_E.shape == (NUM_EXPERTS,) and out.counts_E.sum().item() == num_assign + dropped
    assert out.dispatch_E.tolist() == torch.bincount(out.expert_idx_A, minlength=NUM_EXPERTS).tolist()
    assert not out.counts_E.requires_grad


@pytest.mark.parametrize("name", TOPK_PRESETS)
def test_topk_selects_exactly_k_distinct_experts(name):
    out = make_router(name)(torch.randn(64, DIM))
    experts_TK = out.expert_idx_A.view(64, TOP_K)
    assert torch.equal(out.token_idx_A.view(64, TOP_K), torch.arange(64)[:, None].expand(64, TOP_K))
    assert all(len(set(row.tolist())) == TOP_K for row in experts_TK)


def expected_gates(cfg: RouterConfig, scores_TE, token_A, expert_A):
    gate_A = scores_TE[token_A, expert_A]
    if cfg.route_norm:
        sums_T = torch.zeros(scores_TE.shape[0]).index_add(0, token_A, gate_A)
        gate_A = gate_A / sums_T[token_A]
    return gate_A * cfg.route_scale


# NOTE: Sinkhorn's training selection reads the balanced logits, not s + b, and capacity caps how
# many tokens expert 3 may take (both tested below)
@pytest.mark.parametrize("name", [n for n in router_names() if not get_router_config(n).params.get("sinkhorn_iters")
                                  and get_router_config(n).selection != "expert_choice"  # it has no bias
                                  and not get_router_config(n).rule.by_token_id  # no score picks its experts
                                  and not get_router_config(n).capacity_factor])
def test_bias_changes_selection_but_never_the_gates(name):
    router = make_router(name)
    x = torch.randn(32, DIM)
    router(x)  # lets dynamic k initialise its bias
    router.expert_bias[3] += 50.0  # expert 3 now wins every token's selection
    out = router(x)
    scores_TE = out.scores_TE.detach()
    chosen_by_token = [set(out.expert_idx_A[out.token_idx_A == t].tolist()) for t in range(32)]
    assert all(3 in chosen for chosen in chosen_by_token)
    torch.testing.assert_close(out.gate_A.detach(), expected_gates(router.cfg, scores_TE, out.token_idx_A, out.expert_idx_A))
    # and the scores themselves do not see the bias
    torch.testing.assert_close(scores_TE, make_router(name)(x).scores_TE.detach())


def test_bias_is_float32_state_not_a_parameter():
    router = make_router("loss_free")
    assert "expert_bias" in router.state_dict() and router.state_dict()["expert_bias"].dtype == torch.float32
    assert all("bias" not in name for name, _ in router.named_parameters())
    router.expert_bias.fill_(0.25)
    fresh = make_router("loss_free")
    fresh.load_state_dict(router.state_dict())
    assert torch.all(fresh.expert_bias == 0.25)


COUNTS = torch.tensor([10.0, 30.0, 20.0, 20.0])  # F = [.125, .375, .25, .25], Q = .25


@pytest.mark.parametrize("update, expected_step", [
    ("sign", [-1.0, 1.0, 0.0, 0.0]),
    # e = [-.125, .125, 0, 0], RMS(e) = .125 / sqrt(2)
    ("rms", [-(2**0.5), 2**0.5, 0.0, 0.0]),
    # e / Q = [-.5, .5, 0, 0]
    ("linear", [-0.5, 0.5, 0.0, 0.0]),
])
def test_loss_free_update_forms_on_hand_counts(update, expected_step):
    cfg = RouterConfig(score_func="sigmoid").replace(bias_mode="loss_free", bias_update=update, bias_rate=0.01)
    router = Router(DIM, 4, 2, cfg)
    router.expert_bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    router.balance_update(COUNTS, num_tokens=40)
    expected = torch.tensor([0.1, 0.2, 0.3, 0.4]) - 0.01 * torch.tensor(expected_step)
    torch.testing.assert_close(router.expert_bias, expected)


def test_smebu_update_on_hand_counts():
    # counts [10, 30, 20, 20]: relative violation e = (c - 20) / 20 = [-.5, .5, 0, 0]
    cfg = RouterConfig(score_func="sigmoid").replace(bias_mode="smebu", bias_rate=0.01, smebu_kappa=2.0,
                                                     smebu_momentum=0.5)
    router = Router(DIM, 4, 2, cfg)
    start = torch.tensor([0.1, 0.2, 0.3, 0.4])
    router.expert_bias.copy_(start)
    t = math.tanh(1.0)  # tanh(kappa e) at e = +-.5
    step = torch.tensor([0.01 * t, -0.01 * t, 0.0, 0.0])  # -u tanh(kappa e), already centred
    router.balance_update(COUNTS, num_tokens=40)
    torch.testing.assert_close(router.expert_bias, start + 0.5 * step)  # m = (1 - beta) step
    router.balance_update(COUNTS, num_tokens=40)
    torch.testing.assert_close(router.expert_bias, start + (0.5 + 0.75) * step)  # m = beta m + (1 - beta) step
    torch.testing.assert_close(router.expert_bias.mean(), start.mean())  # centred: the mean stays


def test_smebu_clamps_softly_and_centres_a_lopsided_step():
    from harness.routing.controllers.smebu import smebu_step

    step = smebu_step(torch.tensor([80.0, 0.0, 0.0, 0.0]), rate=0.01, kappa=2.0)  # e = [3, -1, -1, -1]
    raw = -0.01 * torch.tanh(torch.tensor([6.0, -2.0, -2.0, -2.0]))
    torch.testing.assert_close(step, raw - raw.mean())
    assert step.abs().max() <= 0.02 and step.sum().abs() < 1e-9  # bounded by the clamp, centred
    near = smebu_step(torch.tensor([21.0, 19.0, 20.0, 20.0]), rate=0.01, kappa=2.0)  # e = +-.05: linear regime
    torch.testing.assert_close(near[:2], torch.tensor([-0.01 * 2 * 0.05, 0.01 * 2 * 0.05]), rtol=1e-2, atol=0)


@pytest.mark.parametrize("update", ["sign", "rms", "linear"])
def test_centring_keeps_the_mean_of_the_bias(update):
    cfg = RouterConfig(score_func="sigmoid").replace(bias_mode="loss_free", bias_update=update, bias_center=True,
                                                     bias_rate=0.1)
    router = Router(DIM, 4, 2, cfg)
    router.expert_bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    for counts in ([10.0, 30.0, 25.0, 15.0], [1.0, 0.0, 0.0, 79.0]):
        router.balance_update(torch.tensor(counts), num_tokens=40)
        torch.testing.assert_close(router.expert_bias.mean(), torch.tensor(0.05))


def test_bias_freezes_for_the_last_fraction_of_training():
    router = make_router("loss_free", bias_freeze_frac=0.25)
    counts = torch.tensor([8.0, 0, 0, 0, 0, 0, 0, 0])
    router.balance_update(counts, num_tokens=4, progress=0.5)
    moved = router.expert_bias.clone()
    assert moved[0] < 0
    router.balance_update(counts, num_tokens=4, progress=0.8)
    assert torch.equal(router.expert_bias, moved)


@pytest.mark.parametrize("rule, expected", [
    # Ft = [.5, .25, .25, 0], K = 1 < k = 2, F = [.5, .25, .25, 0]: sign(F-Q) = [1, 0, 0, -1], mean 0
    ("eq3", [-1.0, 0.0, 0.0, 1.0]),
    ("eq4", [-1.0, 0.0, 0.0, 1.0]),
    # Ft - kQ = [0, -.25, -.25, -.5]
    ("eq5", [0.0, 1.0, 1.0, 1.0]),
])
def test_dynamic_k_rules_on_hand_counts(rule, expected):
    cfg = RouterConfig(score_func="sigmoid", selection="threshold").replace(bias_mode="dynamic_k", dynamic_k_rule=rule,
                                                                            bias_rate=1.0)
    router = Router(DIM, 4, 2, cfg)
    new = router.controller.update(torch.zeros(4), torch.tensor([2.0, 1.0, 1.0, 0.0]), 4)
    # eq3 adds sign(K - k) = -1 to every expert; eq4 clamps that at 0
    shift = {"eq3": 1.0, "eq4": 0.0, "eq5": 0.0}[rule]
    torch.testing.assert_close(new, torch.tensor(expected) + shift)


@pytest.mark.parametrize("name", THRESHOLD_PRESETS)
def test_dynamic_k_controller_holds_k_and_balances(name):
    torch.manual_seed(0)
    rate = {"bias_rate": 0.01} if "bias_rate" in get_router_config(name).controller.params else {}
    router = Router(DIM, NUM_EXPERTS, TOP_K, get_router_config(name, **rate))
    # a fixed, skewed input distribution: a shared offset makes a few experts preferred
    offset = torch.randn(DIM) * 2.0
    gen = torch.Generator().manual_seed(1)

    def batch():
        return torch.randn(256, DIM, generator=gen) + offset

    with torch.no_grad():
        first = router(batch())
        start_vio = maxvio(first.counts_E)
        for _ in range(400):
            out = router(batch())
            router.balance_update(out.counts_E, num_tokens=256)
        ks, vios = [], []
        for _ in range(20):
            out = router(batch())
            ks.append(out.counts_E.sum().item() / 256)
            vios.append(maxvio(out.counts_E))
    mean_k = sum(ks) / len(ks)
    if router.cfg.params.get("dynamic_k_rule") == "eq4":
        assert mean_k <= TOP_K * 1.1
    else:
        assert abs(mean_k - TOP_K) <= 0.1 * TOP_K
    if router.cfg.bias_mode in ("quantile", "expert_threshold"):  # start at the first batch's own cut-offs: balanced
        assert sum(vios) / len(vios) < 0.3
    else:
        assert sum(vios) / len(vios) < start_vio


def test_threshold_init_fires_about_k_per_token():
    router = make_router("dynamic_k")
    out = router(torch.randn(500, DIM))
    assert out.counts_E.sum().item() / 500 == pytest.approx(TOP_K, abs=0.01)


def test_aux_loss_is_one_when_uniform_and_n_when_collapsed():
    num_tokens, n, k = 8, 4, 2
    uniform_probs = torch.full((num_tokens, n), 1 / n)
    uniform_counts = torch.full((n,), num_tokens * k / n)
    assert balancing.aux_loss(uniform_probs, uniform_counts).item() == pytest.approx(1.0)
    collapsed_probs = torch.zeros(num_tokens, n)
    collapsed_probs[:, 0] = 1.0
    collapsed_counts = torch.tensor([num_tokens * k, 0.0, 0.0, 0.0])
    assert balancing.aux_loss(collapsed_probs, collapsed_counts).item() == pytest.approx(n)


def test_aux_loss_gradient_flows_through_p_only():
    probs = torch.softmax(torch.randn(6, 4), -1).requires_grad_()
    counts = probs.sum(0) * 2  # deliberately differentiable: the loss must still treat F as constant
    loss = balancing.aux_loss(probs, counts)
    (grad,) = torch.autograd.grad(loss, probs)
    frac = (counts / counts.sum()).detach()
    torch.testing.assert_close(grad, (4 * frac / 6).expand(6, 4))


@pytest.mark.parametrize("name", [n for n in router_names() if get_router_config(n).aux_alpha > 0])
def test_aux_loss_reaches_the_router_weights(name):
    router = make_router(name)
    out = router(torch.randn(20, DIM), seq_len=10)
    out.aux_losses["aux_loss"].backward()
    assert router.gate.weight.grad is not None and router.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("scope", ["micro_batch", "sequence", "global_batch"])
def test_aux_scopes_give_one_on_uniform_routing(scope):
    router = Router(DIM, 4, 1, RouterConfig(aux_alpha=1.0, aux_scope=scope))
    router.gate.weight.data.zero_()
    # equal scores make P uniform, so the loss is n * sum_i F_i / n = 1 whatever F is
    out = router(torch.randn(8, DIM), seq_len=4)
    assert out.aux_losses["aux_loss"].item() == pytest.approx(1.0)


def test_z_loss_matches_its_formula():
    router = make_router("softmax_topk", z_loss_beta=1e-3)
    x = torch.randn(10, DIM)
    out = router(x)
    expected = 1e-3 * torch.logsumexp(router.gate(x), -1).square().mean()
    torch.testing.assert_close(out.aux_losses["z_loss"], expected)


def test_global_batch_scope_counts_the_whole_step():
    router = make_router("softmax_topk_aux", aux_scope="global_batch")
    router.train()
    a, b = router(torch.randn(10, DIM)), router(torch.randn(10, DIM))
    torch.testing.assert_close(router.step_counts, a.counts_E + b.counts_E)
    router.balance_update(a.counts_E + b.counts_E, num_tokens=20)
    assert router.step_counts.sum() == 0


def test_presets_are_copies_that_change_one_field():
    assert resolve_router(get_router_config("loss_free").replace(bias_update="rms")) == get_router_config("loss_free_rms")


@pytest.mark.parametrize("n_group, topk_group, top_k", [(4, 2, 2), (4, 1, 2), (8, 3, 3), (2, 1, 1)])
def test_group_limited_routing_never_selects_outside_the_best_groups(n_group, topk_group, top_k):
    torch.manual_seed(0)
    cfg = get_router_config("loss_free", n_group=n_group, topk_group=topk_group)
    router = Router(16, 8, top_k, cfg)
    router.expert_bias.copy_(torch.randn(8) * 0.1)  # the bias counts in the group scores
    out = router(torch.randn(64, 16))
    biased = out.scores_TE + router.expert_bias
    size = 8 // n_group
    for t in range(64):  # naive reference: score each group by its two best, keep the topk_group best
        group_scores = [sorted(biased[t, g * size:(g + 1) * size].tolist(), reverse=True)[:2] for g in range(n_group)]
        best = sorted(range(n_group), key=lambda g: -sum(group_scores[g]))[:topk_group]
        chosen = out.expert_idx_A[out.token_idx_A == t].tolist()
        assert len(chosen) == top_k and all(e // size in best for e in chosen), (t, chosen, best)
        eligible = [e for g in best for e in range(g * size, (g + 1) * size)]
        expected = sorted(eligible, key=lambda e: -biased[t, e].item())[:top_k]
        assert sorted(chosen) == sorted(expected)


def test_group_limited_routing_that_cannot_hold_k_experts_is_refused():
    with pytest.raises(ValueError, match="router.n_group = 3 must divide model.num_experts = 8"):
        Router(16, 8, 2, get_router_config("loss_free", n_group=3, topk_group=1))
    with pytest.raises(ValueError, match="eligible groups must hold at least top_k = 3"):
        Router(16, 8, 3, get_router_config("loss_free", n_group=8, topk_group=2))


def test_aux_counts_unbiased_ignores_the_bias_dispatched_follows_it():
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    losses = {}
    for counts in ("dispatched", "unbiased"):
        cfg = get_router_config("deepseek_v3", aux_scope="micro_batch", aux_alpha=1.0, aux_counts=counts)
        torch.manual_seed(1)
        router = Router(16, 8, 2, cfg)
        router.expert_bias.copy_(torch.tensor([50.0, 50.0, 0, 0, 0, 0, 0, 0]))  # dispatch all to experts 0, 1
        out = router(x)
        probs = out.scores_TE / out.scores_TE.sum(-1, keepdim=True)
        assert out.counts_E[:2].tolist() == [256.0, 256.0]
        mask = torch.zeros_like(out.scores_TE, dtype=torch.bool).scatter_(
            1, (out.scores_TE if counts == "unbiased" else out.scores_TE + router.expert_bias).topk(2).indices, True)
        frac = mask.sum(0) / mask.sum()
        losses[counts] = out.aux_losses["aux_loss"].item()
        assert losses[counts] == pytest.approx(8 * (frac * probs.mean(0)).sum().item(), rel=1e-5)
    assert losses["dispatched"] != pytest.approx(losses["unbiased"])


def test_sinkhorn_balances_the_training_selection_and_leaves_the_gates_alone():
    torch.manual_seed(0)
    router = Router(16, 8, 2, get_router_config("sinkhorn"))
    with torch.no_grad():
        router.gate.weight[:2] += 0.1  # with inputs around 1: two experts everyone prefers
    x = torch.randn(2048, 16) + 1.0
    out = router(x)
    router.eval()
    plain = router(x)
    assert maxvio(plain.counts_E) > 1.0 and maxvio(out.counts_E) < 0.15  # balanced within 15 %
    torch.testing.assert_close(out.gate_A, plain.scores_TE[out.token_idx_A, out.expert_idx_A]
                               / plain.scores_TE.gather(1, out.expert_idx_A.view(-1, 2)).sum(1).repeat_interleave(2))
    log_p = balancing.sinkhorn(torch.randn(512, 8) * 3, 50).exp()
    torch.testing.assert_close(log_p.sum(0), torch.full((8,), 64.0), rtol=1e-3, atol=1e-3)


def test_capacity_is_exact_where_floating_point_is_not():
    from harness.engine.metrics import capacity_drop_frac

    assert 1.1 * 50 * 2 / 10 > 11  # the float product that kept a 12th slot
    assert balancing.expert_capacity(1.1, 50, 2, 10) == 11
    assert balancing.expert_capacity(1.25, 4096, 2, 16) == 640 and balancing.expert_capacity(1.0, 7, 2, 4) == 4
    counts_LE = torch.tensor([[12.0, 10, 10, 10, 10, 10, 10, 10, 9, 9]])  # 100 assignments of 50 tokens x k 2
    assert capacity_drop_frac(counts_LE, 50, 2, 1.1).item() == pytest.approx(1 / 100)  # one over C = 11


@pytest.mark.parametrize("policy", ["probs", "position"])
@pytest.mark.parametrize("factor", [0.5, 1.0, 1.1, 1.25])
def test_capacity_keeps_exactly_the_right_assignments(policy, factor):
    torch.manual_seed(0)
    cfg = get_router_config("switch_capacity", capacity_factor=factor, drop_policy=policy)
    router = Router(16, 8, 2, cfg)
    with torch.no_grad():
        router.gate.weight[:2] += 0.1  # an imbalance for capacity to bite on
    x = torch.randn(96, 16) + 1.0
    out = router(x)
    router.cfg = resolve_router(cfg.replace(capacity_factor=0.0))
    ref = router(x)
    capacity = {0.5: 12, 1.0: 24, 1.1: 27, 1.25: 30}[factor]  # ceil(c 96 2 / 8), by hand
    expected = set()
    for e in range(8):  # naive: each expert's assignments in priority order, the first `capacity` kept
        mine = [(t, g) for t, ex, g in zip(ref.token_idx_A.tolist(), ref.expert_idx_A.tolist(), ref.gate_A.tolist())
                if ex == e]
        mine.sort(key=(lambda tg: -tg[1]) if policy == "probs" else (lambda tg: tg[0]))
        expected |= {(t, e) for t, _ in mine[:capacity]}
    kept = set(zip(out.token_idx_A.tolist(), out.expert_idx_A.tolist()))
    assert kept == expected
    assert out.num_dropped.item() == len(ref.token_idx_A) - len(expected) > 0
    lookup = {(t, e): g for t, e, g in zip(ref.token_idx_A.tolist(), ref.expert_idx_A.tolist(), ref.gate_A.tolist())}
    assert all(abs(lookup[k] - g) < 1e-6 for k, g in zip(kept, [dict(zip(zip(out.token_idx_A.tolist(),
               out.expert_idx_A.tolist()), out.gate_A.tolist()))[k] for k in kept]))  # gates as before the drop
    torch.testing.assert_close(out.counts_E, ref.counts_E)  # balancing sees what was routed


@pytest.mark.parametrize("name", ["quantile_balancing", "quantile_threshold"])
def test_quantile_bias_fires_each_expert_on_about_k_over_n_of_tokens(name):
    torch.manual_seed(0)
    router = Router(DIM, NUM_EXPERTS, TOP_K, get_router_config(name))
    offset = torch.randn(DIM) * 2.0  # skewed: without the bias a few experts would take most tokens
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(100):
            out = router(torch.randn(512, DIM, generator=gen) + offset)
            router.balance_update(out.counts_E, num_tokens=512)
        scores = router(torch.randn(4096, DIM, generator=gen) + offset).scores_TE
    fire_rate = (scores + router.expert_bias > 0).float().mean(dim=0)  # expert choice written as token choice
    torch.testing.assert_close(fire_rate, torch.full((NUM_EXPERTS,), TOP_K / NUM_EXPERTS), atol=0.03, rtol=0)
    expected = -torch.quantile(scores, 1 - TOP_K / NUM_EXPERTS, dim=0)  # the bias is the quantile itself
    torch.testing.assert_close(router.expert_bias, expected, atol=0.02, rtol=0)


def test_quantile_bias_is_the_quantile_of_the_whole_step_within_a_bin():
    """Three micro-batches of different sizes pooled: the bias is minus the (1 - k/n) quantile of all
    their scores together (torch.quantile), within the histogram's bin width; not the mean of
    three per-micro-batch quantiles."""
    from harness.routing.controllers.quantile import QB_BINS

    router = make_router("quantile_balancing", qb_ema=0.0)
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(n, DIM, generator=gen) * (1 + i) for i, n in enumerate((64, 200, 37))]
    router(batches[0][:8])  # the first forward sets the starting bias (exactly, from its own scores)
    router.controller.step_hist.zero_()
    with torch.no_grad():
        scores = [router(x).scores_TE for x in batches]
    router.balance_update(torch.ones(NUM_EXPERTS), num_tokens=301)
    pooled = torch.quantile(torch.cat(scores), 1 - TOP_K / NUM_EXPERTS, dim=0)
    torch.testing.assert_close(router.expert_bias, -pooled, atol=1 / QB_BINS, rtol=0)
    per_batch = torch.stack([torch.quantile(s, 1 - TOP_K / NUM_EXPERTS, dim=0) for s in scores]).mean(dim=0)
    assert (pooled - per_batch).abs().max() > 4 / QB_BINS  # the case the old rule got wrong


def test_quantile_balancing_refuses_an_unbounded_score():
    with pytest.raises(ValueError, match="needs router.score_func in \\['sigmoid', 'softmax'\\], not 'relu'"):
        get_router_config("quantile_balancing", score_func="relu")


@pytest.mark.parametrize("chunk", [0, 16, 32])
def test_expert_choice_gives_each_expert_exactly_c_tokens_per_chunk(chunk):
    router = make_router("expert_choice", ec_chunk=chunk)
    x = torch.randn(64, DIM)
    out = router(x)
    size = chunk or 64
    capacity = balancing.expert_choice_capacity(size, TOP_K, NUM_EXPERTS)
    assert capacity == size * TOP_K // NUM_EXPERTS
    scores_TE = out.scores_TE.detach()
    for start in range(0, 64, size):  # naive loop: per chunk and expert, its C best tokens
        in_chunk = (out.token_idx_A >= start) & (out.token_idx_A < start + size)
        for e in range(NUM_EXPERTS):
            taken = set(out.token_idx_A[in_chunk & (out.expert_idx_A == e)].tolist())
            best = set((scores_TE[start:start + size, e].topk(capacity).indices + start).tolist())
            assert taken == best
    assert out.counts_E.tolist() == [64 * TOP_K / NUM_EXPERTS] * NUM_EXPERTS
    assert torch.equal(out.token_idx_A, out.token_idx_A.sort().values)  # token-major, as the contract says
    k_T = torch.bincount(out.token_idx_A, minlength=64)
    assert k_T.float().mean() == TOP_K and k_T.max() > TOP_K  # a variable number per token, mean k


def test_expert_choice_causal_topk_picks_k_per_token_from_the_same_scores():
    router = make_router("expert_choice")
    x = torch.randn(32, DIM)
    router.causal_topk = True
    out = router(x)
    assert torch.bincount(out.token_idx_A, minlength=32).tolist() == [TOP_K] * 32
    expected = out.scores_TE.topk(TOP_K, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(out.expert_idx_A.view(32, TOP_K).sort(dim=-1).values, expected)


def test_expert_choice_depends_on_later_tokens_and_causal_topk_does_not():
    router = make_router("expert_choice")
    x = torch.randn(32, DIM)
    changed = x.clone()
    changed[16:] = torch.randn(16, DIM) * 5  # only the later half of the chunk changes
    first_half = lambda out: out.expert_idx_A[out.token_idx_A < 16].tolist()  # noqa: E731
    assert first_half(router(x)) != first_half(router(changed))
    router.causal_topk = True
    assert first_half(router(x)) == first_half(router(changed))


@pytest.mark.parametrize("bad, match", [
    ({"ec_chunk": -1}, "router.ec_chunk"),
    ({"bias_mode": "loss_free"}, "expert_choice.*bias_mode"),
    ({"n_group": 2}, r"router.n_group is not read by router.selection = 'expert_choice'.*selection in \[.*'topk'\]"),
    ({"capacity_factor": 1.0}, "expert_choice.*capacity_factor"),
])
def test_expert_choice_refuses_what_it_cannot_combine_with(bad, match):
    with pytest.raises(ValueError, match=match):
        get_router_config("expert_choice", **bad)


def test_expert_choice_chunk_must_divide_the_micro_batch():
    from harness.suites.keys import resolve

    with pytest.raises(ValueError, match=r"router.ec_chunk = 100 must divide the 2048 tokens.*batch_size 16"):
        resolve({"router": "expert_choice", "router.ec_chunk": 100, "model.seq_len": 128})
    with pytest.raises(ValueError, match="ec_chunk = 24 must divide the 32 tokens"):
        make_router("expert_choice", ec_chunk=24)(torch.randn(32, DIM))


def test_a_router_bias_term_moves_the_logits_and_trains_and_its_column_is_written_only_where_set(tiny_settings):
    """router.gate_bias (gpt-oss's router bias): z = x W + c, c starting at 0 and reaching the gradient;
    a run that leaves it off keeps the row, and so the run id, it had before the field existed."""
    from harness.engine.train import run
    from harness.suites.keys import resolve

    router = make_router("softmax_topk", gate_bias=True)
    assert router.gate.bias is not None and not router.gate.bias.any()
    with torch.no_grad():
        router.gate.bias.copy_(torch.arange(NUM_EXPERTS, dtype=torch.float32))
    x = torch.randn(32, DIM)
    out = router(x)
    torch.testing.assert_close(out.scores_TE, torch.softmax(x @ router.gate.weight.T + router.gate.bias, -1))
    out.gate_A.sum().backward()
    assert router.gate.bias.grad is not None and router.gate.bias.grad.abs().sum() > 0
    plain, biased = (resolve({**tiny_settings, "router": "loss_free", **extra}) for extra in ({}, {"router.gate_bias": True}))
    assert "router.gate_bias" not in plain.flat() and biased.flat()["router.gate_bias"] is True
    assert plain.run_id != biased.run_id
    record = run(resolve({**tiny_settings, "router": "loss_free", "router.gate_bias": True, "train.steps": 3})).record
    assert record["status"] == "ok" and record["router.gate_bias"] is True


def test_route_norm_at_k_1_warns_that_the_router_gets_no_gradient():
    with pytest.warns(UserWarning, match="top_k = 1 makes every gate exactly 1"):
        router = Router(DIM, NUM_EXPERTS, 1, get_router_config("softmax_topk", route_norm=True))
    out = router(torch.randn(8, DIM))
    assert torch.equal(out.gate_A, torch.ones_like(out.gate_A))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Router(DIM, NUM_EXPERTS, 2, get_router_config("softmax_topk", route_norm=True))
        Router(DIM, NUM_EXPERTS, 1, get_router_config("softmax_topk", route_norm=False))


@pytest.mark.parametrize("name", router_names())
def test_routing_under_bf16_autocast_equals_float32_routing(name):
    """Issue 37: the gate's matmul ran in bf16 under autocast, and 1-2.4 % of tokens got other experts.
    The gate now computes in float32 with autocast off: the same assignments, gates and logits."""
    torch.manual_seed(0)
    router = Router(32, 8, 2, get_router_config(name)).eval()
    x = torch.randn(2048, 32)
    token_ids = torch.arange(2048)
    with torch.no_grad():
        plain = router(x, seq_len=256, token_ids=token_ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = router(x, seq_len=256, token_ids=token_ids)
    assert mixed.logits_TE.dtype == torch.float32
    for field in ("token_idx_A", "expert_idx_A", "gate_A", "logits_TE"):
        assert torch.equal(getattr(plain, field), getattr(mixed, field)), field
