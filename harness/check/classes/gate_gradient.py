"""The LM loss reaches the router through the gate weights: top-1 with a softmax taken after the
top-k makes every weight 1 and the router untrainable (Megatron issue 894)."""

import torch

from harness.check.base import Check, Outcome, register_check, route, router_grad


@register_check("gate_gradient")
class GateGradient(Check):
    source = "Megatron-LM issue 894"
    claim = "a loss on the gate weights gives the router's parameters a gradient"

    def run(self, ctx):
        a = ctx.fresh()
        a.module.train()
        T, E = 64, a.num_experts
        r = route(a, ctx.tokens(a, T), seq_len=T)
        if not r.weights_TK.requires_grad:
            return Outcome("fail", "the returned weights carry no autograd graph (detached or built without grad)")
        coef = torch.randn(r.weights_TK.shape, generator=torch.Generator().manual_seed(5))
        (torch.where(r.valid_TK(E), r.weights_TK, 0) * coef).sum().backward()
        grad = router_grad(a)
        if grad == 0:
            spread = float(r.weights_TK.detach()[r.valid_TK(E)].std())
            return Outcome("fail", f"the router's gradient is exactly 0 (weights std {spread:.3g}): the LM loss cannot "
                                   "train it")
        return Outcome("pass", f"sum |grad| = {grad:.3g}")
