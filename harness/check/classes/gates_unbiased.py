"""The selection bias steers which experts a token gets, never the weights it gets from them
(the Loss-Free paper: the bias enters the top-k only)."""

import torch

from harness.check.base import Check, Outcome, register_check, route


def sorted_slots(r, E):
    """[T, K] ids and weights ordered by id, so two routes with the same sets compare slot by slot."""
    ids = torch.where(r.valid_TK(E), r.ids_TK, E)
    order = ids.argsort(dim=1)
    return ids.gather(1, order), r.weights_TK.detach().float().gather(1, order)


@register_check("gates_unbiased")
class GatesUnbiased(Check):
    source = "Loss-Free Balancing (Wang et al. 2024), section 3"
    claim = "a token keeps the same weights when a bias change leaves its experts the same"
    needs = ("bias",)

    def run(self, ctx):
        a = ctx.fresh()
        a.module.eval()
        T, E = 256, a.num_experts
        x = ctx.tokens(a, T)
        with torch.no_grad():
            a.set_bias(torch.zeros(E))
            ids0, w0 = sorted_slots(route(a, x, seq_len=T), E)
            gen = torch.Generator().manual_seed(3)
            a.set_bias(0.05 * torch.randn(E, generator=gen))
            ids1, w1 = sorted_slots(route(a, x, seq_len=T), E)
        same = (ids0 == ids1).all(dim=1)
        if not same.any():
            return Outcome("n/a", "the bias changed every token's experts: nothing to compare")
        gap = float((w0[same] - w1[same]).abs().max())
        if gap > 1e-6:
            return Outcome("fail", f"weights moved by up to {gap:.3g} on tokens whose experts stayed the same "
                                   f"({int(same.sum())} of {T}): the bias enters the gates")
        return Outcome("pass", f"{int(same.sum())} of {T} tokens kept their experts; their weights moved <= {gap:.1e}")
