"""The counts a bias update reads, summed over a step's forwards in bf16, stop growing exactly at
2^14 = 16384 (spacing 128 there): the update's signs flip (Megatron PR 7081)."""

import torch

from harness.check.base import Check, Outcome, register_check, route


@register_check("counts_precision")
class CountsPrecision(Check):
    source = "Megatron-LM PR 7081"
    claim = "under bf16 autocast, counts pending past 2^14 per expert equal the exact sum of each forward's counts"
    needs = ("step",)

    def run(self, ctx):
        a = ctx.fresh()
        a.module.train()
        T, E, forwards = 4096, a.num_experts, 20
        exact = torch.zeros(E, dtype=torch.float64)
        with torch.no_grad(), ctx.amp():
            for seed in range(forwards):
                r = route(a, ctx.tokens(a, T, seed=seed), seq_len=T)
                counts = r.counts_E if r.counts_E is not None else torch.bincount(
                    r.ids_TK[r.valid_TK(E)], minlength=E)
                exact += counts.double().cpu()
        pending = torch.as_tensor(a.pending_counts()).double().cpu()
        gap = float((pending - exact).abs().max())
        if gap > 0.5:
            return Outcome("fail", f"after {forwards} forwards of {T} tokens, the pending counts are off by up to "
                                   f"{gap:g} (exact max {float(exact.max()):g}; pending dtype "
                                   f"{torch.as_tensor(a.pending_counts()).dtype})")
        return Outcome("pass", f"pending counts exact up to {float(exact.max()):g} per expert (> 2^14)")
