"""Two instances of a router in one stack with dense layers between them: each must get its
gradient and make its balancing update exactly as it would alone. Layers mixing enabled and
disabled balancing skipped updates through a shared registry of MoE layers (torchtitan PR 3686)."""

import torch
from torch import nn

from harness.check.adapter import has
from harness.check.base import Check, Outcome, register_check, route, router_grad


def drive(layers, dense, xs, T):
    """Route xs through dense -> layer -> dense -> layer ..., backward, step; each layer's inputs."""
    seen = [[] for _ in layers]
    for x in xs:
        h, loss = x, 0.0
        for i, (layer, lin) in enumerate(zip(layers, dense)):
            h = lin(h)
            seen[i].append(h.detach().clone())
            r = route(layer, h, seq_len=T)
            w = torch.where(r.valid_TK(layer.num_experts), r.weights_TK, 0)
            loss = loss + (w * torch.linspace(-1, 1, w.shape[1])).sum() + (r.aux_total() or 0.0)
            h = h * (1 + w.sum(dim=1, keepdim=True))
        loss.backward()
        for layer in layers:
            if has(layer, "step", "pending_counts"):
                layer.step(T)
    return seen


@register_check("mixed_stack")
class MixedStack(Check):
    source = "torchtitan PR 3686"
    claim = "in a dense/MoE/dense/MoE stack both routers get gradients and update their biases as each alone"

    def run(self, ctx):
        layers = [ctx.fresh(seed=s) for s in (0, 1)]
        torch.manual_seed(7)
        dense = [nn.Linear(layers[0].dim, layers[0].dim) for _ in layers]
        T = 64
        for layer in layers:
            layer.module.train()
        seen = drive(layers, dense, [ctx.tokens(layers[0], T, seed=s) for s in (1, 2, 3)], T)
        grads = [router_grad(layer) for layer in layers]
        if min(grads) == 0:
            return Outcome("fail", f"router gradients {grads}: a router in the stack gets none")
        if not has(layers[0], "bias", "step"):
            return Outcome("pass", f"both routers get gradients ({grads[0]:.3g}, {grads[1]:.3g}); no bias update")
        for i, seed in enumerate((0, 1)):
            alone = ctx.fresh(seed=seed)
            alone.module.train()
            for h in seen[i]:
                route(alone, h, seq_len=T)
                alone.step(T)
            if not torch.equal(alone.bias, layers[i].bias):
                return Outcome("fail", f"router {i + 1}'s bias {layers[i].bias.tolist()} in the stack, "
                                       f"{alone.bias.tolist()} alone on the same inputs")
        return Outcome("pass", f"gradients ({grads[0]:.3g}, {grads[1]:.3g}); both biases as alone after 3 steps")
