"""The MoE layer against a naive per-token loop, for every preset and both expert paths."""

import pytest
import torch

from harness.engine.moe import MoELayer, swiglu, unit_rms
from harness.routing import get_router_config, router_names

DIM, HIDDEN, NUM_EXPERTS, TOP_K = 16, 32, 8, 2
IDS = torch.arange(12).view(2, 6) * 7  # the tokens' ids, for a rule that routes by them (hash)


def make_layer(name: str, impl: str = "loop", num_shared: int = 0, seed: int = 0) -> MoELayer:
    torch.manual_seed(seed)
    return MoELayer(DIM, HIDDEN, NUM_EXPERTS, TOP_K, get_router_config(name), num_shared=num_shared, impl=impl)


def reference_forward(layer: MoELayer, x_BLD: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert, with the selection and gates the router chose."""
    x_TD = x_BLD.reshape(-1, DIM)
    route = layer.router(x_TD, seq_len=x_BLD.shape[1], token_ids=IDS.reshape(-1))
    e = layer.experts
    rows = []
    for t in range(x_TD.shape[0]):
        y = torch.zeros(DIM)
        for a in (route.token_idx_A == t).nonzero().flatten().tolist():
            i = route.expert_idx_A[a].item()
            out = swiglu(x_TD[t], e.w1[i], e.w3[i], e.w2[i])
            if layer.normalize_output:
                out = unit_rms(out)
            y = y + route.gate_A[a] * out
        if layer.shared is not None:
            y = y + layer.shared(x_TD[t])
        if route.identity_T is not None:  # zero-computation experts return the token, gated
            y = y + route.identity_T[t] * x_TD[t]
        rows.append(y)
    return torch.stack(rows).view_as(x_BLD)


def grads(layer: MoELayer) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl", ["loop", "grouped_mm"])
@pytest.mark.parametrize("name", router_names())
def test_layer_equals_per_token_reference(name, impl):
    layer = make_layer(name, impl, num_shared=1)
    x = torch.randn(2, 6, DIM, requires_grad=True)
    layer(x, token_ids=IDS)  # the first call initialises a dynamic-k bias; compare from the second on
    layer.zero_grad()
    out = layer(x, token_ids=IDS)
    (x_grad,) = torch.autograd.grad(out.square().sum(), x, retain_graph=True)
    out.square().sum().backward()
    fast_grads = grads(layer)
    layer.zero_grad()
    ref = reference_forward(layer, x)
    (x_grad_ref,) = torch.autograd.grad(ref.square().sum(), x, retain_graph=True)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_grad, x_grad_ref, rtol=1e-4, atol=1e-5)
    ref_grads = grads(layer)
    assert fast_grads.keys() == ref_grads.keys() and "router.gate.weight" in fast_grads
    for key in ref_grads:
        torch.testing.assert_close(fast_grads[key], ref_grads[key], rtol=1e-4, atol=1e-5, msg=key)


def test_tokens_with_no_expert_get_zero_routed_output():
    layer = make_layer("dynamic_k")
    x = torch.randn(1, 8, DIM)
    layer(x)
    layer.router.expert_bias.fill_(-10.0)  # nothing fires
    out = layer(x)
    assert layer.last_route.token_idx_A.numel() == 0
    assert torch.equal(out, torch.zeros_like(out))


def test_same_seed_gives_bit_identical_outputs():
    x = torch.randn(3, 7, DIM)
    a = make_layer("loss_free", seed=5)(x)
    b = make_layer("loss_free", seed=5)(x)
    assert torch.equal(a, b)


def test_bias_is_not_an_optimizer_parameter():
    layer = make_layer("loss_free")
    names = [n for n, _ in layer.named_parameters()]
    assert "router.expert_bias" not in names and "router.expert_bias" in layer.state_dict()


@pytest.mark.parametrize("impl", ["loop", "grouped_mm"])
def test_experts_without_tokens_get_zero_gradient(impl):
    layer = make_layer("loss_free", impl)
    layer.router.expert_bias.copy_(torch.tensor([50.0, 50.0, 0, 0, 0, 0, 0, 0]))  # only experts 0 and 1
    x = torch.randn(1, 10, DIM, requires_grad=True)
    out = layer(x)
    torch.testing.assert_close(out, reference_forward(layer, x))
    out.square().sum().backward()
    for w in (layer.experts.w1, layer.experts.w2, layer.experts.w3):
        assert torch.all(w.grad[2:] == 0) and w.grad[:2].abs().sum() > 0


def test_input_gradient_is_bit_identical_when_tokens_use_many_experts():
    # with 3+ experts per token, a gather whose backward adds duplicates with atomics gave a
    # different gradient from run to run (and so different dynamic-k training runs)
    layer = make_layer("dynamic_k")
    x = torch.randn(1, 512, DIM, requires_grad=True)
    layer(x)
    layer.router.expert_bias.fill_(10.0)  # every token fires all 8 experts
    g = torch.randn(1, 512, DIM)
    grads = [torch.autograd.grad((layer(x) * g).sum(), x)[0] for _ in range(6)]
    assert all(torch.equal(grads[0], other) for other in grads[1:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", [n for n in router_names() if get_router_config(n).selection == "topk"])
def test_topk_routing_and_dispatch_never_sync_the_host_on_cuda(name):
    # threshold selection (dynamic k) needs nonzero() and so one sync; top-k needs none
    torch.manual_seed(0)
    layer = MoELayer(DIM, HIDDEN, NUM_EXPERTS, TOP_K, get_router_config(name), impl="grouped_mm").cuda()
    x = torch.randn(2, 64, DIM, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):  # as training runs on CUDA
        layer(x)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            layer(x).float().sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert layer.router.expert_bias.dtype == torch.float32


def test_cpu_autocast_runs_the_experts_in_bfloat16():
    layer = make_layer("loss_free")
    x = torch.randn(1, 8, DIM, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    assert torch.isfinite(out).all() and layer.experts.w1.grad.dtype == torch.float32
    assert layer.router.expert_bias.dtype == torch.float32


@pytest.mark.parametrize("capability, dtype, ok", [((9, 0), torch.bfloat16, True), ((10, 0), torch.bfloat16, True),
                                                   ((12, 0), torch.bfloat16, False), ((8, 0), torch.bfloat16, False),
                                                   ((9, 0), torch.float32, False)])
def test_grouped_mm_is_taken_on_sm90_and_sm100_only(monkeypatch, capability, dtype, ok):
    """Issue 37: sm120 passed a `>= (9, 0)` check into torch's hidden fallback; an A100 (sm80) raised."""
    from harness.engine.moe import grouped_mm_unsupported

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    why = grouped_mm_unsupported(torch.device("cuda"), dtype, 64, 64)
    assert (why is None) == ok and (ok or f"sm{capability[0]}{capability[1]}" in why or "bfloat16" in why)


def test_grouped_mm_where_it_cannot_run_says_why_and_runs_the_loop():
    from harness.engine.moe import Experts

    torch.manual_seed(0)
    forced, loop = Experts(4, 12, 10, impl="grouped_mm"), Experts(4, 12, 10, impl="loop")
    loop.load_state_dict(forced.state_dict())
    x, counts = torch.randn(9, 12), torch.tensor([3, 0, 4, 2])
    with pytest.warns(UserWarning, match=r"cannot run here \(the expert widths \[12, 10\] are not multiples of 4"):
        out = forced(x, counts)
    torch.testing.assert_close(out, loop(x, counts))
