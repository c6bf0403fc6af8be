"""Activation recomputation repeats a forward inside the backward: counts, bias observations or an
aux loss's step totals gathered there count the step's tokens twice (Megatron issue 1330,
torchtitan PR 1593)."""

import torch
from torch.utils.checkpoint import checkpoint

from harness.check.base import Check, Outcome, changed, register_check, route, state


def forward_backward(a, x, seq_len, recompute: bool):
    def fn(x):
        r = route(a, x, seq_len=seq_len)
        aux = r.aux_total()
        return r.weights_TK, aux if aux is not None else torch.zeros(())

    weights, aux = checkpoint(fn, x, use_reentrant=False) if recompute else fn(x)
    coef = torch.randn(weights.shape, generator=torch.Generator().manual_seed(5))
    ((weights * coef).sum() + aux).backward()
    return {n: p.grad.clone() for n, p in a.module.named_parameters() if p.grad is not None}


@register_check("recompute_once")
class RecomputeOnce(Check):
    source = "Megatron-LM issue 1330; torchtitan PR 1593"
    claim = "a forward recomputed under torch.utils.checkpoint leaves the state and gradients of one plain forward"

    def run(self, ctx):
        plain, ckpt = ctx.fresh(), ctx.fresh()
        plain.module.train(), ckpt.module.train()
        T = 64
        x = ctx.tokens(plain, T).requires_grad_()
        g0 = forward_backward(plain, x, T, recompute=False)
        g1 = forward_backward(ckpt, x.detach().clone().requires_grad_(), T, recompute=True)
        if not g0:
            return Outcome("n/a", "the router's parameters get no gradient: nothing is recomputed")
        s0, s1 = state(plain), state(ckpt)
        moved = changed(s0, s1)
        if moved:
            detail = "; ".join(f"{k}: {s0[k].flatten()[:4].tolist()} plain, {s1[k].flatten()[:4].tolist()} recomputed"
                               for k in moved[:2] if k in s0 and k in s1)
            return Outcome("fail", f"recomputation changed {', '.join(moved)} ({detail})")
        gap = max(float((g0[n] - g1[n]).abs().max()) for n in g0) if set(g0) == set(g1) else float("inf")
        if gap > 1e-6:
            return Outcome("fail", f"the gradients differ by {gap:.3g} with recomputation")
        return Outcome("pass", f"state ({len(s0)} tensors) and gradients equal with recomputation (gap {gap:.1e})")
